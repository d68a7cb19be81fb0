#!/usr/bin/env bash
# Installs the Debian packages the test suite needs, only when one is missing. Safe to re-run.
set -euo pipefail
pkgs=(sip-tester kamailio baresip asterisk-core-sounds-en-wav sox espeak-ng postgresql)
need=()
command -v sipp >/dev/null || need+=(sip-tester)
command -v kamailio >/dev/null || need+=(kamailio)
command -v baresip >/dev/null || need+=(baresip)
command -v sox >/dev/null || need+=(sox)
command -v espeak-ng >/dev/null || need+=(espeak-ng)
[ -d /usr/share/asterisk/sounds/en ] || need+=(asterisk-core-sounds-en-wav)
# PostgreSQL for tests/records and tests/web (a throw-away server per test session; not a service).
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "install-sysdeps: missing ${need[*]} and cannot apt-get here; tests that need them will skip" >&2
  exit 0
fi
echo "install-sysdeps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || true
apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
: "${pkgs[@]}"
