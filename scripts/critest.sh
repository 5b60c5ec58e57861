#!/usr/bin/env bash
# Runs the Kubernetes CRI validation suite (critest, from kubernetes-sigs/cri-tools) against a private containerd
# on this machine, once with the `runc` runtime handler and once with `hull`, and prints a summary per handler:
#   scripts/critest.sh CRITEST_BINARY [critest args...]
# CRITEST_BINARY is a critest built elsewhere (CI cannot fetch cri-tools), e.g. for v1.28.0, from the
# repository's vendored modules:
#   CGO_ENABLED=0 GOFLAGS=-mod=vendor GOPROXY=off go test -c -trimpath -o critest ./cmd/critest
# (what its Makefile's `critest` target runs; Debian 12's Go 1.19 builds v1.28.0 this way).
# Extra arguments go to critest as they are (e.g. --ginkgo.focus='PodSandbox').
#
# What it does:
#   1. installs what is missing through the repo's scripts (install-test-deps.sh: containerd, runc, CNI plugins,
#      busybox-static; install-qemu.sh) and apt-need.sh (iptables for the CNI portmap plugin, util-linux), and
#      downloads (`apt-get download`, not installed) Debian's dynamic busybox for the images' /bin/sh;
#   2. builds the guest (resources/build-guest.sh) unless HULL_KERNEL and HULL_INITRD name it, and the
#      workspace's binaries (cargo build --workspace --bins) unless CRITEST_NO_BUILD=1;
#   3. per handler, starts `critest-env` (tests/src/bin/critest-env.rs): a private containerd with its own root,
#      state and sockets, both handlers (hull with the default shim config, which refuses hostNetwork, hostPID
#      and hostIPC pods by design), a CNI bridge network in a network namespace of its own, and every image
#      critest uses built locally and imported (critest never pulls: the "Image Manager" tests, which pull from
#      registries, are skipped);
#   4. runs critest in that network namespace (it fetches pages from pod IPs and host ports, and streams through
#      containerd's stream server there), one spec at a time, with the images file critest-env wrote;
#   5. removes the 1 MiB shared memory segments critest's HostIpc specs leave on the host, and prints
#      passed/failed/skipped and the failed specs' names per handler.
# Exit status: 0 when every run ran to its end (failed specs are reported, not fatal), else 1.
#
# Environment: CRITEST_HANDLERS (default "runc hull"), CRITEST_OUT (where logs go; default
# target/critest/<date>): per handler critest.log, containerd.log (shim logs included) and env.err;
# HULL_KERNEL/HULL_INITRD (the guest, skips build-guest.sh); CRITEST_NO_BUILD=1 (use the binaries already
# built in cargo's target directory). Wants root, like the containerd tests.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[critest.sh] $*" >&2; }

if [ $# -lt 1 ] || [ ! -x "$1" ]; then
  echo "usage: $0 CRITEST_BINARY [critest args...]  (CRITEST_BINARY must be an executable critest)" >&2
  exit 2
fi
critest=$(realpath "$1")
shift
handlers=${CRITEST_HANDLERS:-runc hull}
start=$(date +%s)

# --- 1. tools
source scripts/apt-need.sh
apt_need critest.sh gcc binutils libc6-dev iptables util-linux
bash scripts/install-test-deps.sh
bash scripts/install-qemu.sh

# --- 2. the guest and the binaries
if [ -z "${HULL_KERNEL:-}" ] || [ -z "${HULL_INITRD:-}" ]; then
  log "building the guest kernel and initramfs (resources/build-guest.sh)"
  guest=$(bash resources/build-guest.sh)
  HULL_KERNEL=$(sed -n 's/^kernel=//p' <<<"$guest" | tail -n 1)
  HULL_INITRD=$(sed -n 's/^initrd=//p' <<<"$guest" | tail -n 1)
fi
[ -f "$HULL_KERNEL" ] && [ -f "$HULL_INITRD" ] || { log "no guest kernel/initrd ($HULL_KERNEL, $HULL_INITRD)"; exit 1; }
export HULL_KERNEL HULL_INITRD
if [ "${CRITEST_NO_BUILD:-0}" != 1 ]; then
  log "cargo build --workspace --bins"
  cargo build --workspace --bins
fi
target=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin_dir="$target/debug"
for b in critest-env hull containerd-shim-hull-v2; do
  [ -x "$bin_dir/$b" ] || { log "$bin_dir/$b is missing (cargo build --workspace --bins)"; exit 1; }
done
# The images' /bin/sh: Debian's dynamic busybox (package `busybox`, downloaded, not installed: it conflicts with
# busybox-static), built without FEATURE_SH_STANDALONE, so `sh -c ls` executes /bin/ls as critest's MaskedPaths
# test expects. Without it the images keep busybox-static's shell and that test fails because of the image.
sh_dir="$target/critest-busybox"
if [ ! -x "$sh_dir/bin/busybox" ]; then
  tmp=$(mktemp -d)
  if (cd "$tmp" && { apt-get download busybox || { apt-get update -q && apt-get download busybox; }; }) >&2 &&
    dpkg-deb -x "$tmp"/busybox_*.deb "$sh_dir.new"; then
    rm -rf "$sh_dir" && mv "$sh_dir.new" "$sh_dir"
  else
    log "could not download Debian's busybox package: the images keep busybox-static's shell"
  fi
  rm -rf "$tmp" "$sh_dir.new"
fi
env_args=()
[ -x "$sh_dir/bin/busybox" ] && env_args=(--sh "$sh_dir/bin/busybox")
out=${CRITEST_OUT:-$target/critest/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
out=$(realpath "$out")
log "critest: $critest ($("$critest" --version 2>/dev/null | grep -i version | head -n 1))"
log "logs under $out"

# --- 3./4. one private containerd and one critest run per handler
summary=""
status=0
# critest's HostIpc specs make a 1 MiB System V shared memory segment on the host (`ipcmk -M 1048576`) and never
# remove it: after each run, segments that appeared during it with that size and nothing attached are removed.
shm_ids() { awk 'NR > 1 { print $2 }' /proc/sysvipc/shm | sort; }
remove_critest_shm() {
  local before=$1 id
  for id in $(comm -13 <(printf '%s\n' "$before") <(shm_ids)); do
    if awk -v id="$id" 'NR > 1 && $2 == id && $4 == 1048576 && $7 == 0 { found = 1 } END { exit !found }' \
      /proc/sysvipc/shm; then
      ipcrm -m "$id" || true
    fi
  done
}
run_handler() {
  local handler=$1 dir="$out/$1"
  shift
  mkdir -p "$dir"
  rm -f "$dir/ctl"
  mkfifo "$dir/ctl"
  "$bin_dir/critest-env" --log-dir "$dir" "${env_args[@]}" <"$dir/ctl" >"$dir/env.out" 2>"$dir/env.err" &
  local env_pid=$!
  # Holding the fifo's write end open keeps critest-env running; closing it (or SIGTERM) makes it clean up.
  exec {ctl}>"$dir/ctl"
  local waited=0
  until grep -qx ready "$dir/env.out" 2>/dev/null; do
    if ! kill -0 "$env_pid" 2>/dev/null || [ "$waited" -ge 1200 ]; then
      log "$handler: critest-env did not get ready; its stderr:"
      tail -n 40 "$dir/env.err" >&2
      exec {ctl}>&-
      kill "$env_pid" 2>/dev/null || true
      wait "$env_pid" 2>/dev/null || true
      summary+="$handler: critest-env failed (see $dir/env.err)"$'\n'
      status=1
      return
    fi
    sleep 1
    waited=$((waited + 1))
  done
  local sock netns images
  sock=$(sed -n 's/^socket=//p' "$dir/env.out")
  netns=$(sed -n 's/^netns=//p' "$dir/env.out")
  images=$(sed -n 's/^test_images_file=//p' "$dir/env.out")
  cp "$images" "$dir/test-images.yaml"
  log "$handler: containerd at $sock, network namespace $netns"
  local rc=0 shm_before
  shm_before=$(shm_ids)
  # critest's --parallel defaults to 1 (one spec at a time) and must not be given: ginkgo refuses a set
  # "parallel" flag ("Use of go test -parallel").
  nsenter --net="/run/netns/$netns" "$critest" \
    --runtime-endpoint "unix://$sock" --image-endpoint "unix://$sock" \
    --runtime-handler "$handler" \
    --test-images-file "$images" \
    --ginkgo.skip 'Image Manager' \
    --ginkgo.timeout 4h \
    --ginkgo.no-color \
    "$@" >"$dir/critest.log" 2>&1 || rc=$?
  remove_critest_shm "$shm_before"
  exec {ctl}>&-
  wait "$env_pid" || log "$handler: critest-env exited with $? while cleaning up (see $dir/env.err)"
  # Ginkgo's last lines: "Ran N of M Specs in S seconds", "FAIL! -- P Passed | F Failed | 0 Pending | K Skipped"
  # (or "SUCCESS! -- ..."), and before them "Summarizing F Failures:" with one "[FAIL] ..." line per spec.
  local ran counts
  ran=$(grep -E '^Ran [0-9]+ of [0-9]+ Specs' "$dir/critest.log" | tail -n 1 || true)
  counts=$(grep -E '(SUCCESS|FAIL)! -- [0-9]+ Passed' "$dir/critest.log" | tail -n 1 || true)
  if [ -z "$counts" ]; then
    log "$handler: critest did not run to its end (exit $rc); last lines of $dir/critest.log:"
    tail -n 30 "$dir/critest.log" >&2
    summary+="$handler: critest did not finish (exit $rc, see $dir/critest.log)"$'\n'
    status=1
    return
  fi
  summary+="== $handler: $ran; $counts"$'\n'
  local failed
  failed=$(sed -n '/^Summarizing [0-9]* Failure/,/^Ran [0-9]* of/p' "$dir/critest.log" |
    grep -E '^ *\[(FAIL|TIMEDOUT|PANICKED!|ABORTED|INTERRUPTED)\]' | sed -E 's/^ *//' || true)
  if [ -n "$failed" ]; then
    summary+="$failed"$'\n'
  fi
}

for handler in $handlers; do
  log "running critest with runtime handler $handler"
  run_handler "$handler" "$@"
done

echo
echo "critest summary ($(basename "$critest"), logs under $out, $(( $(date +%s) - start )) s):"
printf '%s' "$summary"
exit "$status"
