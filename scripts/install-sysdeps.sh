#!/usr/bin/env bash
# Installs the Debian packages the test suite uses and checks the exact paths it uses from them.
#
#   scripts/install-sysdeps.sh           # `make sysdeps` (run by `make test` and `make bench`)
#   scripts/install-sysdeps.sh --check   # only check; exit 1 naming every missing path and its package
#
# The list is scripts/sysdeps.txt (PACKAGE ABSOLUTE-PATH per line; SYSDEPS_LIST overrides its location).
# Packages are installed only when one of their paths is missing, so a re-run does nothing. After
# installing, every path is checked again: anything still missing fails the run (exit 1) with the
# path and the package. Where installing is impossible (not root, or no apt-get) the missing paths
# are reported and the run goes on (exit 0): the tests that need them skip and say why.
set -euo pipefail
LIST=${SYSDEPS_LIST:-$(dirname "$0")/sysdeps.txt}
[ -r "$LIST" ] || { echo "install-sysdeps: cannot read $LIST" >&2; exit 1; }

# prints "PACKAGE PATH" for each listed path that does not exist
missing() {
  local pkg path rest
  while read -r pkg path rest; do
    case "$pkg" in '' | '#'*) continue ;; esac
    if [ -z "$path" ] || [ -n "$rest" ] || [ "${path#/}" = "$path" ]; then
      echo "install-sysdeps: $LIST: malformed line: $pkg $path $rest" >&2
      exit 1
    fi
    [ -e "$path" ] || echo "$pkg $path"
  done <"$LIST"
}

report() {  # $1: what to say; stdin: "PACKAGE PATH" lines
  local pkg path
  while read -r pkg path; do echo "install-sysdeps: $1: $path (Debian package $pkg)" >&2; done
}

gone=$(missing)
[ -z "$gone" ] && exit 0
if [ "${1:-}" = --check ]; then
  report missing <<<"$gone"
  exit 1
fi
need=$(awk '{print $1}' <<<"$gone" | sort -u | tr '\n' ' ')
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  report "missing, cannot apt-get here (not root or no apt-get)" <<<"$gone"
  echo "install-sysdeps: run as root: apt-get install --no-install-recommends $need" >&2
  echo "install-sysdeps: the tests that need these will skip" >&2
  exit 0
fi
echo "install-sysdeps: installing $need"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086  # $need is a list of package names
apt-get install -y -q --no-install-recommends $need >/dev/null
gone=$(missing)
if [ -n "$gone" ]; then
  report "still missing after apt-get install" <<<"$gone"
  exit 1
fi
echo "install-sysdeps: every path in $LIST is present"
