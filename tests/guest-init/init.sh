#!/bin/busybox sh
# /init of the vhost-user test guests: busybox userland, then /test.sh, then a reset (QEMU runs with
# -no-reboot, so the reset ends QEMU). The host reads the serial console; lines it looks for:
#   HULL-TEST-READY          user space is up
#   HULL-TEST-EXIT <status>  /test.sh finished with <status>
/bin/busybox mkdir -p /proc /sys /dev /tmp /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo HULL-TEST-READY
sh /test.sh
echo "HULL-TEST-EXIT $?"
sync
reboot -f
