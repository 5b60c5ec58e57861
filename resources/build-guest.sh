#!/usr/bin/env bash
# Builds hull's guest: a minimal x86_64 microVM kernel (ELF vmlinux with the PVH note, and a bzImage) from
# Debian's linux-source-6.1, and an initramfs whose /init is the statically linked hull-agent.
#
# Everything is cached under ${HULL_CACHE:-$HOME/.cache/hull}, keyed by a hash of what went into it, so a second
# run takes seconds. Progress goes to stderr; the last two lines on stdout are
#   kernel=<absolute path of vmlinux>
#   initrd=<absolute path of the initramfs>
#
# Options: --kernel-only (skip the initramfs), --bzimage (print the bzImage as kernel=... instead of vmlinux).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cache="${HULL_CACHE:-$HOME/.cache/hull}"
kernel_only=0
want_bzimage=0
for arg in "$@"; do
  case "$arg" in
    --kernel-only) kernel_only=1 ;;
    --bzimage) want_bzimage=1 ;;
    *) echo "build-guest.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

log() { echo "[build-guest] $*" >&2; }

# --- 1. what the build needs, from Debian's packages
source "$here/../scripts/apt-need.sh"
apt_need build-guest linux-source-6.1 bison flex libelf-dev bc libssl-dev cpio xz-utils gzip make gcc

# One build at a time: a second invocation waits here, then finds the cache filled.
mkdir -p "$cache"
exec 9>"$cache/.build-guest.lock"
if ! flock -n 9; then
  log "another build-guest.sh is running (lock $cache/.build-guest.lock); waiting for it"
  flock 9
fi

src_tar=$(ls /usr/src/linux-source-6.1.tar.xz)
src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1)

# --- 2. the kernel, keyed by source version + config fragment + patches + this script's kernel part
key=$( { echo "$src_version"; cat "$here/guest-kernel.config"; cat "$here"/patches/*.patch;
         sed -n '/^# --- 2/,/^# --- 3/p' "$0"; } | sha256sum | cut -c1-16)
kdir="$cache/kernel-$key"
if [ -f "$kdir/vmlinux" ] && [ -f "$kdir/bzImage" ]; then
  log "kernel cached in $kdir"
else
  log "building the guest kernel into $kdir (first time: about 6-10 minutes on 2 cores)"
  build="$cache/build-$key"
  rm -rf "$build"
  mkdir -p "$build"
  trap 'rm -rf "$build" "$kdir.tmp"' EXIT
  log "unpacking $src_tar"
  tar -xf "$src_tar" -C "$build" --strip-components=1
  for p in "$here"/patches/*.patch; do
    log "applying $(basename "$p")"
    patch -d "$build" -p1 --quiet < "$p"
  done
  make -C "$build" -s allnoconfig >&2
  (cd "$build" && KCONFIG_CONFIG=.config scripts/kconfig/merge_config.sh -m .config "$here/guest-kernel.config" >/dev/null)
  make -C "$build" -s olddefconfig >&2
  # Every option the fragment asks for must have survived the dependency resolution.
  missing=0
  while IFS= read -r line; do
    case "$line" in
      CONFIG_*=*)
        grep -qxF "$line" "$build/.config" || { log "config option not applied: $line"; missing=1; } ;;
      "# CONFIG_"*" is not set")
        opt=${line#\# }; opt=${opt%% *}
        if grep -q "^$opt=" "$build/.config"; then log "config option not disabled: $opt"; missing=1; fi ;;
    esac
  done < "$here/guest-kernel.config"
  [ "$missing" = 0 ] || { log "the kernel config fragment does not apply cleanly"; exit 1; }
  start=$(date +%s)
  # Kbuild's short lines (CC, LD, ...) are the progress report.
  make -C "$build" -j"$(nproc)" vmlinux bzImage >&2
  log "kernel built in $(( $(date +%s) - start )) s"
  mkdir -p "$kdir.tmp"
  cp "$build/vmlinux" "$kdir.tmp/vmlinux"
  cp "$build/arch/x86/boot/bzImage" "$kdir.tmp/bzImage"
  cp "$build/.config" "$kdir.tmp/config"
  cp "$build/usr/gen_init_cpio" "$kdir.tmp/gen_init_cpio"
  rm -rf "$kdir"
  mv "$kdir.tmp" "$kdir"
  rm -rf "$build"
  trap - EXIT
fi
kernel="$kdir/vmlinux"
[ "$want_bzimage" = 1 ] && kernel="$kdir/bzImage"

# --- 3. the initramfs: /init is the statically linked hull-agent
if [ "$kernel_only" = 1 ]; then
  echo "kernel=$kernel"
  exit 0
fi
target=x86_64-unknown-linux-gnu
# Built for size (opt-level z, LTO, one codegen unit: 3.2 MB instead of 4.9): under the software KVM the kernel
# unpacks the initramfs in emulated ring 0 at roughly 10 s per MB, so every megabyte is felt in every boot.
# The profile overrides apply to this build only (its own --target directory).
log "building hull-agent (static, size-optimised, $target)"
(cd "$repo" && CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
  CARGO_PROFILE_RELEASE_OPT_LEVEL=z CARGO_PROFILE_RELEASE_LTO=true CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
  cargo build --release --quiet -p guest-agent --bin hull-agent --target "$target" >&2)
agent="${CARGO_TARGET_DIR:-$repo/target}/$target/release/hull-agent"
# A static(-pie) binary has no program interpreter; ldd cannot tell (it "runs" static-pie binaries).
if readelf -l "$agent" | grep -q "Requesting program interpreter"; then
  log "hull-agent is not statically linked"; exit 1
fi
# The initramfs: the nodes the kernel needs before devtmpfs is mounted (/dev/console for init's stdio), the
# mount points the agent uses, and the agent as /init. Keyed by the agent binary and this list.
list=$(mktemp)
trap 'rm -f "$list"' EXIT
cat > "$list" <<EOF
dir /dev 0755 0 0
nod /dev/console 0600 0 0 c 5 1
nod /dev/null 0666 0 0 c 1 3
dir /proc 0555 0 0
dir /sys 0555 0 0
dir /run 0755 0 0
dir /tmp 1777 0 0
file /init $agent 0755 0 0
EOF
ikey=$(cat "$agent" "$list" | sha256sum | cut -c1-16)
initrd="$cache/initramfs-$ikey.cpio"
if [ -f "$initrd" ]; then
  log "initramfs cached: $initrd"
else
  # Uncompressed on purpose: inflating it is the slowest part of early boot when guest kernel code is
  # emulated (kvm_pvm), and a few MiB more to copy cost nothing on hardware KVM.
  "$kdir/gen_init_cpio" "$list" > "$initrd.tmp"
  mv "$initrd.tmp" "$initrd"
  log "initramfs written: $initrd ($(stat -c %s "$initrd") bytes)"
fi

echo "kernel=$kernel"
echo "initrd=$initrd"
