# virtio-blk over vhost-user: read a known pattern, and check the read-only drive refuses writes.
. /lib.sh
rw=$(dev_by_serial pattern-drive) || { echo "no pattern-drive"; exit 1; }
ro=$(dev_by_serial ro-drive) || { echo "no ro-drive"; exit 1; }
echo "PATTERN-SECTORS $(cat /sys/block/${rw#/dev/}/size)"
echo "PATTERN-SHA $(sha256sum "$rw" | cut -d' ' -f1)"
echo "RO-FLAG $(cat /sys/block/${ro#/dev/}/ro)"
echo "RO-SHA $(sha256sum "$ro" | cut -d' ' -f1)"
if dd if=/dev/zero of="$ro" bs=4096 count=1 conv=fsync 2>/dev/null; then
  echo "RO-WRITE accepted"
else
  echo "RO-WRITE refused"
fi
# Reads at the very end and past the end of the disk.
sectors=$(cat /sys/block/${rw#/dev/}/size)
dd if="$rw" of=/dev/null bs=512 skip=$((sectors - 1)) count=1 2>/dev/null && echo "LAST-SECTOR ok"
echo "PAST-END $(dd if="$rw" bs=512 skip=$sectors count=1 2>/dev/null | wc -c)"
