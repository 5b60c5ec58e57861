#!/usr/bin/env bash
# Builds a small busybox rootfs directory for `hull run`: Debian's busybox-static as /bin/busybox, one
# symlink per applet, /etc/passwd and /etc/group with root and an unprivileged user (1000), and the usual
# empty mount points. Usage: tests/rootfs/busybox.sh OUT_DIR   (prints OUT_DIR; idempotent)
set -euo pipefail
out="${1:?usage: busybox.sh OUT_DIR}"
bb=""
for p in /bin/busybox /usr/bin/busybox; do
  if [ -x "$p" ] && ! ldd "$p" >/dev/null 2>&1; then bb="$p"; break; fi
done
if [ -z "$bb" ]; then
  echo "busybox.sh: a static busybox is needed (apt-get install busybox-static)" >&2
  exit 1
fi
mkdir -p "$out"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,root,home/user,run,var/tmp}
chmod 1777 "$out/tmp" "$out/var/tmp"
cp "$bb" "$out/bin/busybox"
for applet in $("$out/bin/busybox" --list); do
  [ "$applet" = busybox ] && continue
  ln -sf busybox "$out/bin/$applet"
done
cat > "$out/etc/passwd" <<'P'
root:x:0:0:root:/root:/bin/sh
user:x:1000:1000:user:/home/user:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
P
cat > "$out/etc/group" <<'G'
root:x:0:
tty:x:5:
user:x:1000:
nogroup:x:65534:
G
chown 1000:1000 "$out/home/user" 2>/dev/null || true
echo "$out"
