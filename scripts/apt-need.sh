#!/usr/bin/env bash
# Sourced, not run: `apt_need LABEL PACKAGE...` installs, from Debian's packages, those of PACKAGE... that are
# not installed yet (one `apt-get update` and one `apt-get install` for all of them), and says so on stderr
# under LABEL. It does nothing when every package is present, so scripts can call it on every run.
apt_need() {
  local label=$1 p
  shift
  local need=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
  done
  if [ "${#need[@]}" -eq 0 ]; then
    return 0
  fi
  echo "[$label] installing ${need[*]} with apt" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2
}
