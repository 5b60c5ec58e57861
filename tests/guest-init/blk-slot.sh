# A disk slot: the virtio-blk drive with serial slot0 boots on an empty placeholder (capacity 0); the host
# attaches ext4 images to it while the guest runs (`hull vhost-user blk --control`). Each round: wait for a
# size > 0 (the config-change interrupt updates it), drop stale buffers (BLKFLSBUF), mount, print the
# file's checksum, unmount; between rounds wait for the host's detach to bring the size back to 0.
. /lib.sh
dev=$(dev_by_serial slot0) || { echo "no slot0"; exit 1; }
name=${dev#/dev/}
echo "SLOT-INITIAL-SIZE $(cat /sys/block/$name/size)"
mkdir -p /mnt
pause() { sleep 0.1 2>/dev/null || sleep 1; }
# wait_size gt|eq: polls /sys/block/<dev>/size until it is > 0 or == 0 (at most ~60 s); prints it.
wait_size() {
  i=0
  while [ $i -lt 600 ]; do
    s=$(cat /sys/block/$name/size)
    if [ "$1" = gt ] && [ "$s" -gt 0 ]; then echo "$s"; return 0; fi
    if [ "$1" = eq ] && [ "$s" -eq 0 ]; then echo "$s"; return 0; fi
    pause
    i=$((i + 1))
  done
  return 1
}
for round in 1 2; do
  echo "SLOT-WAITING $round"
  size=$(wait_size gt) || { echo "SLOT-NEVER-FILLED $round"; exit 1; }
  echo "SLOT-SIZE-$round $size"
  blockdev --flushbufs "$dev" || { echo "SLOT-FLUSHBUFS-FAILED $round"; exit 1; }
  mount -t ext4 -o ro "$dev" /mnt || { echo "SLOT-MOUNT-FAILED $round"; exit 1; }
  echo "SLOT-SHA-$round $(sha256sum /mnt/data.bin | cut -d' ' -f1)"
  echo "SLOT-NAME-$round $(cat /mnt/name.txt)"
  umount /mnt || { echo "SLOT-UMOUNT-FAILED $round"; exit 1; }
  echo "SLOT-UNMOUNTED $round"
  if [ "$round" = 1 ]; then
    wait_size eq >/dev/null || { echo "SLOT-NEVER-EMPTIED"; exit 1; }
    echo "SLOT-EMPTIED"
  fi
done
