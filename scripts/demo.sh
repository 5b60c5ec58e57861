#!/usr/bin/env bash
# hull's main job, end to end: build the guest kernel + initramfs and the hull binary, then run a container
# in its own microVM with `hull run` and show that it ran inside the guest kernel.
#
#   scripts/demo.sh          hull run a busybox rootfs: `uname -r` prints the guest kernel's release
#   scripts/demo.sh --api    also boot a bare microVM through hull's Firecracker-compatible REST API
#
# `hull run --backend auto` uses the hull VMM on hardware KVM. On a software KVM (kvm_pvm, where no guest
# reaches user space) it uses QEMU TCG with hull's own vhost-user device backends, and says so.
# The --api boot reaches `hull-agent ready` and powers off on hardware KVM; under kvm_pvm Linux gets as far
# as `Run /init` (1-2 minutes), init cannot make system calls, the kernel panics and reboots (panic=1), and
# hull exits 0 all the same.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "[demo] $*" >&2; }
with_api=0
[ "${1:-}" = "--api" ] && with_api=1

for installer in scripts/install-*.sh; do bash "$installer" >&2; done
for tool in curl bc; do
  command -v "$tool" >/dev/null || { log "installing $tool"; apt-get update -q >&2; apt-get install -y -q "$tool" >&2; }
done
log "building the guest (resources/build-guest.sh; the first kernel build takes a few minutes)"
guest=$(bash resources/build-guest.sh)
kernel=$(sed -n 's/^kernel=//p' <<<"$guest" | tail -n 1)
initrd=$(sed -n 's/^initrd=//p' <<<"$guest" | tail -n 1)
log "building hull and hull-jailer (cargo build --release)"
# hull run starts the VM's processes through hull-jailer, found next to hull.
cargo build --release --quiet -p hull -p hull-jailer
hull=target/release/hull

work=$(mktemp -d)
cleanup() { [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# --- a container in a microVM
rootfs="$work/rootfs"
mkdir -p "$rootfs/bin"
cp /bin/busybox "$rootfs/bin/busybox"
for applet in sh uname echo cat; do ln -s busybox "$rootfs/bin/$applet"; done
log "host kernel: $(uname -r)"
log "hull run --rootfs $rootfs -- uname -r"
"$hull" run --rootfs "$rootfs" --kernel "$kernel" --initrd "$initrd" --timing -- uname -r

[ "$with_api" = 1 ] || exit 0

# --- a bare microVM through the REST API
sock="$work/hull.sock"
log "starting hull --api-sock $sock --boot-timer"
"$hull" --api-sock "$sock" --boot-timer &
pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.02; done
api() { # METHOD PATH BODY
  curl -sS --fail-with-body --unix-socket "$sock" -X "$1" "http://localhost$2" \
    -H 'Content-Type: application/json' ${3:+-d "$3"}
}
log "PUT /boot-source, PUT /machine-config, PUT /actions InstanceStart"
api PUT /boot-source "{\"kernel_image_path\": \"$kernel\", \"initrd_path\": \"$initrd\",
  \"boot_args\": \"console=ttyS0 reboot=k panic=1 hull.poweroff=1\"}"
api PUT /machine-config '{"vcpu_count": 2, "mem_size_mib": 256}'
api PUT /actions '{"action_type": "InstanceStart"}'
log "GET / -> $(api GET /)"
start=$(date +%s.%N)
status=0
wait "$pid" || status=$?
pid=
log "hull exited with status $status after $(echo "$(date +%s.%N) - $start" | bc) s"
exit "$status"
