#!/usr/bin/env bash
# Installs hull for containerd on this machine; idempotent, no arguments needed (run as root from a clone):
#   /usr/local/bin/{hull,hull-vmm,hull-jailer,containerd-shim-hull-v2}  release builds of this checkout
#   /var/lib/hull/{vmlinux,initramfs.cpio}             the guest kernel and the agent's initramfs
#   /var/lib/hull/images, /run/hull/shim               the shim's image cache and VM directories (0700)
#   /etc/hull/shim.toml                                the shim's config (kept if present)
#   /etc/containerd/config.toml                        gains the `hull` runtime handler (once)
#   QEMU (Debian's qemu-system-x86), for hosts where KVM cannot run guest user space
# Then: systemctl restart containerd; kubectl apply -f resources/runtimeclass.yaml
# Environment: PREFIX (default /usr/local), HULL_LIB (default /var/lib/hull), HULL_ETC (default /etc/hull),
# HULL_RUN (default /run/hull), CONTAINERD_CONFIG (default /etc/containerd/config.toml), HULL_PROFILE (release;
# `debug` reuses a debug build).
# Modes, whatever the caller's umask (docs/SECURITY.md, "Host files"): hull's state directories 0700 (packed
# images hold what containers mount, Secrets included); binaries 0755; the kernel, the initramfs and their
# directory 0755/0644 (public, usable by an unprivileged `hull run --kernel`); the config 0644 (paths and
# sizes, no secrets), written privately and made readable before it is moved into place.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
prefix="${PREFIX:-/usr/local}"
lib="${HULL_LIB:-/var/lib/hull}"
etc="${HULL_ETC:-/etc/hull}"
run="${HULL_RUN:-/run/hull}"
ctd_config="${CONTAINERD_CONFIG:-/etc/containerd/config.toml}"
say() { echo "[install] $*" >&2; }

bash "$here/scripts/install-qemu.sh"
need=()
for p in e2fsprogs iproute2; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ "${#need[@]}" -gt 0 ]; then
  say "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2
fi

profile="${HULL_PROFILE:-release}"
say "building hull, hull-jailer and containerd-shim-hull-v2 ($profile)"
if [ "$profile" = release ]; then
  (cd "$here" && cargo build --release -p hull -p hull-jailer -p containerd-shim-hull-v2 >&2)
else
  (cd "$here" && cargo build -p hull -p hull-jailer -p containerd-shim-hull-v2 >&2)
fi
install -D -m 0755 "$here/target/$profile/hull" "$prefix/bin/hull"
# The lean microVM image `hull` execs when started without a subcommand (same build, same directory).
install -D -m 0755 "$here/target/$profile/hull-vmm" "$prefix/bin/hull-vmm"
# The shim starts hull through hull-jailer, found next to hull (shim.toml [jail]).
install -D -m 0755 "$here/target/$profile/hull-jailer" "$prefix/bin/hull-jailer"
install -D -m 0755 "$here/target/$profile/containerd-shim-hull-v2" "$prefix/bin/containerd-shim-hull-v2"

say "building the guest kernel and initramfs (cached)"
out="$(bash "$here/resources/build-guest.sh")"
kernel="$(sed -n 's/^kernel=//p' <<<"$out" | tail -1)"
initrd="$(sed -n 's/^initrd=//p' <<<"$out" | tail -1)"
install -d -m 0755 "$lib"
install -m 0644 "$kernel" "$lib/vmlinux"
install -m 0644 "$initrd" "$lib/initramfs.cpio"
# install -d also tightens directories an older install left 0755, and the images in the cache with them.
install -d -m 0700 "$lib/images" "$run" "$run/shim"
find "$lib/images" -maxdepth 1 -type f ! -perm 0600 -exec chmod 0600 {} +

if [ ! -e "$etc/shim.toml" ]; then
  install -d -m 0755 "$etc"
  # Point the shim at what was just installed when the locations are not the defaults it looks at. Written
  # owner-only (no other user can open it meanwhile and keep the descriptor), made 0644 before the move.
  (umask 077; sed -e "s|^# hull_binary = .*|hull_binary = \"$prefix/bin/hull\"|" \
      -e "s|^# kernel = .*|kernel = \"$lib/vmlinux\"|" \
      -e "s|^# initrd = .*|initrd = \"$lib/initramfs.cpio\"|" \
      -e "s|^image_cache = .*|image_cache = \"$lib/images\"|" \
      -e "s|^work_dir = .*|work_dir = \"$run/shim\"|" \
      "$here/resources/shim.toml" > "$etc/shim.toml.new")
  chmod 0644 "$etc/shim.toml.new"
  mv "$etc/shim.toml.new" "$etc/shim.toml"
  say "wrote $etc/shim.toml"
fi

if [ -d "$(dirname "$ctd_config")" ] || command -v containerd >/dev/null; then
  mkdir -p "$(dirname "$ctd_config")"
  [ -e "$ctd_config" ] || { containerd config default > "$ctd_config" 2>/dev/null || echo "version = 2" > "$ctd_config"; }
  if grep -q 'runtimes.hull\]' "$ctd_config"; then
    say "$ctd_config already has the hull handler"
  else
    { echo; sed "s|/etc/hull/shim.toml|$etc/shim.toml|" "$here/resources/containerd-hull.toml"; } >> "$ctd_config"
    say "added the hull handler to $ctd_config (restart containerd)"
  fi
fi
say "done: $prefix/bin/containerd-shim-hull-v2, $lib/vmlinux, $lib/initramfs.cpio"
