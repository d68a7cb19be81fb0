#!/usr/bin/env bash
# Runs `make test` on a brand-new Debian bookworm, to prove the suite installs everything it needs.
#
#   sudo scripts/fresh-env-test.sh [COMMIT]      # default: HEAD of this checkout (committed tree only)
#
# What it does (idempotent; safe to re-run, also after an interrupted run):
#   1. Builds a pristine base once with debootstrap at $BASE (default /work/chroot-bookworm.base):
#      variant minbase + python3, python3-venv, make, git, ca-certificates. It is never modified
#      afterwards; delete it (or set FRESH_REBUILD=1) to rebuild it from the mirror.
#   2. Copies the base to a throw-away root $ROOT (default /work/chroot-bookworm), so every run starts
#      without the packages an earlier run apt-installed.
#   3. Bind-mounts /proc, /sys, /dev (with /dev/pts and /dev/shm) into it; copies resolv.conf (and a
#      policy-rc.d so installed packages start no services in the chroot), this machine's local CA
#      certificates (/usr/local/share/ca-certificates, e.g. an egress proxy's) and
#      this machine's pip configuration (/etc/pip.conf, /etc/xdg/pip/, /root/.config/pip/) and
#      bind-mounts the local wheel indexes it points at (/opt/wheels, /opt/pypi, /opt/pypi-more),
#      read-only, when they exist. Without them pip reaches PyPI.
#   4. Clones the repository at COMMIT into $ROOT/src and runs `make test` there as root with a clean
#      environment (`make test` = make install + make sysdeps (apt-get) + lint + pytest).
#   5. Prints pytest's result line and the wall time; the full log is $LOG (default
#      /tmp/fresh-env-test.log). Exit status is make's.
# Needs: root, network access to the Debian mirror ($MIRROR, default http://deb.debian.org/debian).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
COMMIT=$(git -C "$REPO" rev-parse "${1:-HEAD}")
BASE=${BASE:-/work/chroot-bookworm.base}
ROOT=${ROOT:-/work/chroot-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=${SUITE:-bookworm}
LOG=${LOG:-/tmp/fresh-env-test.log}

say() { echo "fresh-env: $*" >&2; }
[ "$(id -u)" = 0 ] || { say "must run as root (debootstrap, chroot, mount)"; exit 2; }

unmount_all() {
  # deepest first; only what is mounted under $ROOT
  local m
  for m in $(awk -v r="$ROOT/" 'index($2, r) == 1 {print $2}' /proc/self/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
}

# 1. pristine base
if [ "${FRESH_REBUILD:-0}" = 1 ] || [ ! -e "$BASE/.fresh-env-base" ]; then
  command -v debootstrap >/dev/null || {
    say "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null
  }
  say "debootstrap $SUITE ($MIRROR) -> $BASE"
  rm -rf "$BASE"
  debootstrap --variant=minbase --include=python3,python3-venv,make,git,ca-certificates \
    "$SUITE" "$BASE" "$MIRROR" >"$LOG.debootstrap" 2>&1 || {
    tail -20 "$LOG.debootstrap" >&2
    say "debootstrap failed (log: $LOG.debootstrap)"
    exit 1
  }
  touch "$BASE/.fresh-env-base"
fi

# 2. throw-away copy
unmount_all
rm -rf "$ROOT"
cp -a "$BASE" "$ROOT"
trap unmount_all EXIT

# 3. mounts, DNS, pip configuration
mount -t proc proc "$ROOT/proc"
mount --rbind /sys "$ROOT/sys" && mount --make-rslave "$ROOT/sys"
mount --rbind /dev "$ROOT/dev" && mount --make-rslave "$ROOT/dev"
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
# this machine's own CA certificates (e.g. an egress proxy's), so pip's https works as it does here
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
  chroot "$ROOT" update-ca-certificates >/dev/null 2>&1
fi
# as in any chroot: packages apt installs must not start their services (kamailio) here
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d" && chmod +x "$ROOT/usr/sbin/policy-rc.d"
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$ROOT/etc/pip.conf"
[ -d /etc/xdg/pip ] && mkdir -p "$ROOT/etc/xdg" && cp -r /etc/xdg/pip "$ROOT/etc/xdg/"
[ -d /root/.config/pip ] && mkdir -p "$ROOT/root/.config" && cp -r /root/.config/pip "$ROOT/root/.config/"
for d in /opt/wheels /opt/pypi /opt/pypi-more; do
  if [ -d "$d" ]; then
    mkdir -p "$ROOT$d"
    mount --bind "$d" "$ROOT$d"
    mount -o remount,bind,ro "$ROOT$d" 2>/dev/null || true
  fi
done

# 4. the committed tree
git init -q "$ROOT/src"
git -C "$ROOT/src" fetch -q "$REPO" "+refs/heads/*:refs/remotes/origin/*"
git -C "$ROOT/src" checkout -q --detach "$COMMIT"
say "commit $(git -C "$ROOT/src" log -1 --format='%h %s')"

# 5. make test, clean environment
say "make test in $ROOT/src (log: $LOG)"
start=$(date +%s)
set +e
chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  bash -lc 'cd /src && make test' >"$LOG" 2>&1
rc=$?
set -e
secs=$(( $(date +%s) - start ))
line=$(grep -E '^(=+ )?[0-9]+ (passed|failed|error)|[0-9]+ (passed|failed).* in [0-9.]+s' "$LOG" | tail -1 || true)
echo "fresh-env: make test exit $rc after ${secs}s on $SUITE (commit ${COMMIT:0:10})"
echo "fresh-env: ${line:-no pytest result line; see $LOG}"
[ $rc = 0 ] || tail -40 "$LOG" >&2
exit $rc
