#!/usr/bin/env bash
# The project's one test command (CI runs it through .ci/run):
#   1. installs what is missing, from Debian's packages: the assembler toolchain for the tiny test guests, and
#      whatever scripts/install-*.sh ask for (QEMU for the vhost-user tests);
#   2. builds the guest kernel and initramfs with resources/build-guest.sh (cached under ~/.cache/hull) and
#      exports HULL_KERNEL / HULL_INITRD for the tests;
#   3. builds every binary of the workspace (the tests run the real `hull`);
#   4. runs `cargo test --workspace`, passing any arguments on (e.g. `scripts/test.sh -- --nocapture`).
# Tests that need hardware KVM print a SKIPPED line on machines without it (e.g. under the software kvm_pvm).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[test.sh] $*" >&2; }
start=$(date +%s)

# --- 1. tools
command -v cargo >/dev/null || { log "cargo is required (install Rust: https://rustup.rs)"; exit 1; }
source scripts/apt-need.sh
apt_need test.sh gcc binutils libc6-dev
for installer in scripts/install-*.sh; do
  [ -f "$installer" ] || continue
  log "running $installer"
  bash "$installer"
done

# --- 2. the guest (kernel build takes minutes the first time, seconds afterwards)
log "building the guest kernel and initramfs (resources/build-guest.sh)"
guest=$(bash resources/build-guest.sh)
HULL_KERNEL=$(sed -n 's/^kernel=//p' <<<"$guest" | tail -n 1)
HULL_INITRD=$(sed -n 's/^initrd=//p' <<<"$guest" | tail -n 1)
[ -f "$HULL_KERNEL" ] && [ -f "$HULL_INITRD" ] || { log "build-guest.sh printed no kernel/initrd"; exit 1; }
export HULL_KERNEL HULL_INITRD
log "kernel=$HULL_KERNEL"
log "initrd=$HULL_INITRD"
if [ -e /sys/module/kvm_pvm ]; then
  log "KVM here is the software kvm_pvm: Linux boots stop at 'Run /init' and take about a minute each"
fi

# --- 3. binaries
log "cargo build --workspace --bins"
cargo build --workspace --bins

# --- 4. tests
# --no-fail-fast: one failing test binary must not hide the results of the others.
log "cargo test --workspace --no-fail-fast $*"
status=0
cargo test --workspace --no-fail-fast "$@" || status=$?
log "done in $(( $(date +%s) - start )) s, exit status $status"
exit "$status"
