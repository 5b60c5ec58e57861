# The entropy device (virtio-rng): the kernel chose it as its hardware RNG, and /dev/hwrng hands out
# bytes that look random. The host checks the markers.
echo "RNG-CURRENT $(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)"
dd if=/dev/hwrng of=/tmp/a bs=4096 count=16 2>/dev/null
dd if=/dev/hwrng of=/tmp/b bs=4096 count=16 2>/dev/null
echo "RNG-BYTES $(wc -c < /tmp/a)"
echo "RNG-SHA-A $(sha256sum /tmp/a | cut -d' ' -f1)"
echo "RNG-SHA-B $(sha256sum /tmp/b | cut -d' ' -f1)"
echo "RNG-DISTINCT $(od -An -v -tu1 /tmp/a | tr -s ' ' '\n' | grep . | sort -u | wc -l)"
