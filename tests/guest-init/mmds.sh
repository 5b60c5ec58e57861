# MMDS over virtio-net (V2): eth0 up with a route to the MMDS address, a GET without a token (refused),
# a session token through a hand-written PUT (busybox wget has no PUT), then GETs with it in IMDS text and
# JSON; a ping of the host end of the TAP shows that other traffic still reaches the TAP.
. /lib.sh
ip=$(cmdline_arg hull.ip); host=$(cmdline_arg hull.host); mmds=169.254.169.254
ip link set lo up
ip addr add "$ip/24" dev eth0 && ip link set eth0 up || { echo "NET-SETUP failed"; exit 1; }
ip route add "$mmds" dev eth0
wget -q -O /tmp/none "http://$mmds/latest/meta-data/ami-id" 2>/tmp/none.err
echo "NO-TOKEN rc=$? $(cat /tmp/none.err)"
token=$(printf 'PUT /latest/api/token HTTP/1.1\r\nHost: %s\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n' "$mmds" \
  | nc "$mmds" 80 | tail -n 1)
echo "TOKEN-LEN ${#token}"
get() { wget -q -O - --header "X-metadata-token: $token" "$@"; }
echo "AMI-ID $(get "http://$mmds/latest/meta-data/ami-id")"
echo "LISTING $(get "http://$mmds/latest/meta-data/" | tr '\n' ',')"
echo "BIG-BYTES $(get "http://$mmds/latest/meta-data/big" | wc -c)"
echo "JSON $(get --header 'Accept: application/json' "http://$mmds/latest/meta-data/placement")"
wget -q -O /tmp/missing --header "X-metadata-token: $token" "http://$mmds/latest/nothing" 2>/tmp/missing.err
echo "MISSING rc=$? $(cat /tmp/missing.err)"
if ping -c 2 -W 5 "$host" > /tmp/ping 2>&1; then echo "PING ok"; else echo "PING failed"; cat /tmp/ping; fi
