# virtio-blk over vhost-user: write 1 MiB at 4 MiB with fsync, then wait to be killed.
. /lib.sh
d=$(dev_by_serial data-drive) || { echo "no data-drive"; exit 1; }
seed=$(cmdline_arg hull.seed)
yes "hull-durable-$seed" | head -c 1048576 > /tmp/p
dd if=/tmp/p of="$d" bs=65536 seek=64 conv=fsync 2>/dev/null || { echo "WRITE failed"; exit 1; }
echo "WRITTEN $(sha256sum /tmp/p | cut -d' ' -f1)"
sleep 1000
