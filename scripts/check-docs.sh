#!/usr/bin/env bash
# Checks that every file or directory path a document names still exists.
#
# Usage: scripts/check-docs.sh [DOC.md ...]   (default: docs/ARCHITECTURE.md)
#
# A path is a backticked token without spaces that contains `/` and ends in .rs, .sh, .toml, .md, .yaml,
# .S, .proto or `/`, such as `vmm/src/builder.rs` or `tests/guests/`. Paths are relative to the repository
# root; absolute host paths (`/etc/...`), `~/...` and URLs are not the repository's and are skipped. A token
# with braces (`vmm/src/vcpu/{mod,setup}.rs`) stands for each of its expansions. A token ending in `/` must
# be a directory. Prints every missing path and exits 1 when there is one, 0 otherwise.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
[ "$#" -gt 0 ] || set -- docs/ARCHITECTURE.md

# Brace expansion without eval: a{b,c}d -> abd acd (nested braces are expanded one level at a time).
expand() {
  local tok="$1"
  if [[ "$tok" =~ ^([^{]*)\{([^{}]*)\}(.*)$ ]]; then
    local pre="${BASH_REMATCH[1]}" alts="${BASH_REMATCH[2]}" post="${BASH_REMATCH[3]}" alt
    IFS=',' read -r -a parts <<< "$alts,"
    for alt in "${parts[@]}"; do
      expand "$pre$alt$post"
    done
  else
    printf '%s\n' "$tok"
  fi
}

status=0
checked=0
for doc in "$@"; do
  if [ ! -f "$doc" ]; then
    echo "check-docs: no such document: $doc" >&2
    status=1
    continue
  fi
  missing=()
  while IFS= read -r tok; do
    case "$tok" in
      /* | '~'* | *://*) continue ;;
    esac
    while IFS= read -r path; do
      [ -n "$path" ] || continue
      checked=$((checked + 1))
      if [[ "$path" == */ ]]; then
        [ -d "$path" ] || missing+=("$path")
      else
        [ -e "$path" ] || missing+=("$path")
      fi
    done < <(expand "$tok")
  done < <(grep -o '`[^` ]*`' "$doc" | tr -d '`' |
    grep -E '/' | grep -E '(\.rs|\.sh|\.toml|\.md|\.yaml|\.S|\.proto|/)$' | sort -u)
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "$doc names paths that do not exist:"
    printf '  %s\n' "${missing[@]}" | sort -u
    status=1
  fi
done
if [ "$status" -eq 0 ]; then
  echo "check-docs: $checked paths named in $*, all present"
fi
exit "$status"
