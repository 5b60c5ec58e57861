#!/usr/bin/env bash
# Installs what hull's end-to-end tests need from Debian's packages, only when missing (idempotent):
#   dnsmasq-base  (a DHCP server on the test's TAP, inside a network namespace the test creates)
#   iproute2      (`ip netns`, `ip tuntap`)
#   e2fsprogs     (`mkfs.ext4 -d DIR img 32M` for the root drive)
# and for the containerd harness (tests/src/containerd/, tests/tests/containerd_*.rs):
#   containerd                   (containerd 1.6 and ctr, started privately by each test)
#   runc                         (the io.containerd.runc.v2 baseline)
#   containernetworking-plugins  (CNI bridge, host-local, loopback in /usr/lib/cni)
#   busybox-static               (the test images are built from /bin/busybox)
#   protobuf-compiler            (protoc, for the k8s-cri crate's build script)
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/apt-need.sh"
apt_need install-test-deps dnsmasq-base iproute2 e2fsprogs containerd runc containernetworking-plugins \
  busybox-static protobuf-compiler
