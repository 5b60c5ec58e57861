#!/usr/bin/env bash
# Runs every fuzz target (fuzz/src/targets/) for SECONDS each (default 30) and prints how many inputs each
# one executed. The test suite runs the same targets briefly with a fixed seed (fuzz/tests/targets.rs);
# this is the longer run.
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]        (scripts/fuzz.sh 30 vsock_muxer virtio_block)
#
# Engine: coverage-guided libFuzzer when it builds (fuzz/libfuzzer/, cargo-fuzz's layout, built on the
# stable toolchain with rustc's sancov instrumentation and no sanitizer); otherwise, or with
# HULL_FUZZ_ENGINE=builtin, hull-fuzz's own mutator with a random seed. Corpora and crash inputs stay under
# target/libfuzzer/ (libFuzzer) or target/fuzz-failures/ (built-in). Exits 1 if any target crashed.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[fuzz.sh] $*" >&2; }
seconds="${1:-30}"
[ "$#" -gt 0 ] && shift
case "$seconds" in
  '' | *[!0-9]*) log "SECONDS must be a whole number, got '$seconds'"; exit 2 ;;
esac
engine="${HULL_FUZZ_ENGINE:-libfuzzer}"

# The built-in runner is needed either way: it lists the targets and writes their seed corpora.
log "building hull-fuzz (release)"
cargo build --release -q -p hull-fuzz
runner=target/release/hull-fuzz
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <("$runner" --list)
fi

if [ "$engine" = libfuzzer ]; then
  host="$(rustc -vV | sed -n 's/^host: //p')"
  out=target/libfuzzer
  # Same versions as the workspace: start from its lock file (cargo adds libfuzzer-sys to the copy).
  cp Cargo.lock fuzz/libfuzzer/Cargo.lock
  log "building the libFuzzer binaries (first build takes a few minutes)"
  # --target keeps RUSTFLAGS off build scripts and proc macros, as cargo-fuzz does.
  if ! RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing" \
    cargo build --release -q --manifest-path fuzz/libfuzzer/Cargo.toml --target "$host" --target-dir "$out"; then
    log "libFuzzer did not build here; falling back to the built-in runner"
    engine=builtin
  fi
fi

status=0
if [ "$engine" = libfuzzer ]; then
  "$runner" --write-seeds "$out/seeds"
  printf '%-18s %12s %8s  %s\n' target execs exec/s result
  for t in "${targets[@]}"; do
    corpus="$out/corpus/$t"
    mkdir -p "$corpus" "$out/artifacts"
    cp -n "$out/seeds/$t"/* "$corpus/" 2>/dev/null || true
    logfile="$out/$t.log"
    rc=0
    "$out/$host/release/$t" "$corpus" -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="$out/artifacts/$t-" >"$logfile" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logfile" | tail -n 1)
    per_s=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logfile" | tail -n 1)
    if [ "$rc" -eq 0 ]; then
      result="ok ($(ls "$corpus" | wc -l) corpus inputs)"
    else
      result="CRASH (exit $rc): see $logfile and $out/artifacts/$t-*"
      status=1
    fi
    printf '%-18s %12s %8s  %s\n' "$t" "${execs:-?}" "${per_s:-?}" "$result"
  done
else
  "$runner" --seconds "$seconds" "${targets[@]}" || status=$?
fi
exit "$status"
