# hull-bench devices (bench/src/guest_io.rs): guest-timed reads of the bench drive and vsock bulk transfers.
# Every time is the guest's /proc/uptime (10 ms resolution), read right before and right after the transfer:
#   CLOCKSOURCE <name>                 the guest kernel's clocksource (what /proc/uptime counts with)
#   BLK-CACHE dropped|kept              whether the guest's page cache could be dropped before each read
#   BLK-READ <run> <bytes> <t0> <t1>    dd of the whole drive in 64 KiB blocks, to /dev/null
#   VSOCK-XFER <run> <t0> <t1> <reply>  a bulk transfer the host drives (XFER on port 52, both ways at once),
#                                       bracketed by an echo-client call to host port 5000 that the host
#                                       answers (with the guest's RESULT line) only once the transfer is done
. /lib.sh
runs=$(cmdline_arg hull.runs) || runs=3
d=$(dev_by_serial bench_drive) || { echo "no bench_drive"; exit 1; }
bytes=$(blockdev --getsize64 "$d")
echo "CLOCKSOURCE $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>/dev/null)"
if echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then echo "BLK-CACHE dropped"; else echo "BLK-CACHE kept"; fi
i=0
while [ "$i" -lt "$runs" ]; do
  sync
  echo 3 > /proc/sys/vm/drop_caches 2>/dev/null
  blockdev --flushbufs "$d"
  read -r t0 _ < /proc/uptime
  dd if="$d" of=/dev/null bs=64k 2>/dev/null
  read -r t1 _ < /proc/uptime
  echo "BLK-READ $i $bytes $t0 $t1"
  i=$((i + 1))
done
/bin/vsock-tool serve 52 &
sleep 1 # let it listen before the host's first CONNECT 52
i=0
while [ "$i" -lt "$runs" ]; do
  read -r t0 _ < /proc/uptime
  reply=$(/bin/vsock-tool echo-client 5000 "xfer-$i")
  read -r t1 _ < /proc/uptime
  echo "VSOCK-XFER $i $t0 $t1 $reply"
  i=$((i + 1))
done
