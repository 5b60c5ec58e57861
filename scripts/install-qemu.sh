#!/usr/bin/env bash
# Installs what the vhost-user end-to-end tests need, from Debian's packages, only when missing (idempotent):
#   qemu-system-x86  (QEMU 7.2 TCG boots hull's guest kernel to user space in a few seconds)
#   busybox-static   (the test initramfs's userland)
#   cpio, gcc, iproute2 (initramfs packing, the static vsock helper, network namespaces for the net test)
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/apt-need.sh"
apt_need install-qemu qemu-system-x86 busybox-static cpio gcc libc6-dev iproute2
