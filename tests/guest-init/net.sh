# virtio-net over vhost-user: bring eth0 up with the address from the command line, ping the host end of
# the TAP, then stream data both ways with busybox nc.
. /lib.sh
ip=$(cmdline_arg hull.ip); host=$(cmdline_arg hull.host)
ip link set lo up
ip addr add "$ip/24" dev eth0 && ip link set eth0 up || { echo "NET-SETUP failed"; exit 1; }
echo "GUEST-MAC $(cat /sys/class/net/eth0/address)"
if ping -c 3 -W 5 "$host" > /tmp/ping 2>&1; then echo "PING ok"; else echo "PING failed"; cat /tmp/ping; fi
# guest -> host: 16 MiB of zeros; the host counts and closes.
dd if=/dev/zero bs=65536 count=256 2>/dev/null | nc "$host" 5001
echo "SENT-G2H"
# host -> guest: the host sends a pattern and closes.
echo "RECV-H2G $(nc "$host" 5002 | sha256sum | cut -d' ' -f1)"
