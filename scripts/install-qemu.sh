#!/usr/bin/env bash
# Installs what the vhost-user end-to-end tests need, from Debian's packages, only when missing (idempotent):
#   qemu-system-x86  (QEMU 7.2 TCG boots hull's guest kernel to user space in a few seconds)
#   busybox-static   (the test initramfs's userland)
#   cpio, gcc, iproute2 (initramfs packing, the static vsock helper, network namespaces for the net test)
set -euo pipefail

need=()
for p in qemu-system-x86 busybox-static cpio gcc libc6-dev iproute2; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ "${#need[@]}" -eq 0 ]; then
  echo "[install-qemu] all present" >&2
  exit 0
fi
echo "[install-qemu] installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >&2
apt-get install -y -q --no-install-recommends "${need[@]}" >&2
