#!/usr/bin/env bash
# The README's second command's set-up (and .ci/run's): the test prerequisites that `pipeline run all` does not
# need, installed where missing. Every test runs; none skips for a missing tool:
#   chromium        the browser test (onnxruntime-web) and the report test      Debian package: chromium
#   hey             the HTTP load tool of the serve tests                        hey
#   cmake, c++      building the C++ (libtorch) tool                             cmake build-essential
#   node, npm       the Node / browser engines; then runtime/js/node_modules     nodejs npm
# As root, apt-get installs what is missing, after waiting for any other package install to finish (the dpkg
# and apt locks). Without root, sudo is used where it needs no password; otherwise the exact command is printed
# and the script exits 1. A checkout without .venv gets the first command's install (install.sh) too, so that
# `bash tests/setup.sh && .venv/bin/python -m pytest` works on a fresh clone by itself.
#   LOCK_WAIT_S     how long to wait for another install's package lock (default 600)
#   CHROMIUM        the browser the tests launch (default /usr/bin/chromium)
set -euo pipefail
cd "$(dirname "$0")/.."

LOCK_WAIT_S=${LOCK_WAIT_S:-600}
LOCKS=(/var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock /var/cache/apt/archives/lock)
say() { echo "tests/setup.sh: $*"; }
list() { local out; out=$(printf '%s, ' "$@"); echo "${out%, }"; }
die() { echo "tests/setup.sh: $*" >&2; exit 1; }

# What is missing, as Debian packages.
packages=()
tools=()
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || { packages+=(chromium); tools+=("chromium (${CHROMIUM:-/usr/bin/chromium})"); }
command -v hey >/dev/null 2>&1 || { packages+=(hey); tools+=(hey); }
command -v cmake >/dev/null 2>&1 || { packages+=(cmake); tools+=(cmake); }
if ! command -v c++ >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1; then
  packages+=(build-essential)
  tools+=("a C++ compiler and make")
fi
command -v node >/dev/null 2>&1 || { packages+=(nodejs); tools+=(node); }
command -v npm >/dev/null 2>&1 || { packages+=(npm); tools+=(npm); }

# The PID holding one of the package locks (flock or fcntl, from /proc/locks), or nothing.
lock_holder() {
  local f inode pid
  for f in "${LOCKS[@]}"; do
    [ -e "$f" ] || continue
    inode=$(stat -c %i "$f" 2>/dev/null) || continue
    pid=$(awk -v ino="$inode" '{ n = split($6, a, ":"); if (a[n] == ino && $5 ~ /^[0-9]+$/) { print $5; exit } }' \
      /proc/locks 2>/dev/null) || true
    if [ -n "$pid" ]; then
      echo "$pid"
      return
    fi
  done
}

# Wait (bounded) until no other process holds the package locks, saying who holds them every few seconds.
wait_for_package_lock() {
  local waited=0 pid what
  while pid=$(lock_holder) && [ -n "$pid" ]; do
    if [ "$waited" -ge "$LOCK_WAIT_S" ]; then
      die "the package lock is still held by PID $pid after ${LOCK_WAIT_S} s (another install is running): let it finish, then rerun 'bash tests/setup.sh' (LOCK_WAIT_S=<seconds> waits longer)"
    fi
    if [ $((waited % 5)) -eq 0 ]; then
      what=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-100) || true
      say "waiting for the package lock held by PID $pid${what:+ ($what)} (another install is running): ${waited} s of ${LOCK_WAIT_S} s"
    fi
    sleep 1
    waited=$((waited + 1))
  done
}

# apt-get after the locks are free; apt-get itself also waits (DPkg::Lock::Timeout) should another install
# take the lock in between, and a lock error is retried rather than reported raw.
apt_get() {
  local attempt out rc
  for attempt in 1 2 3; do
    wait_for_package_lock
    rc=0
    out=$("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout="$LOCK_WAIT_S" "$@" 2>&1) || rc=$?
    if [ "$rc" -eq 0 ]; then
      return 0
    fi
    if [ "$attempt" -lt 3 ] && grep -qE 'Could not get lock|Unable to acquire the dpkg frontend lock|Unable to lock' <<<"$out"; then
      say "apt-get $1: the package lock was taken by another install; waiting again"
      continue
    fi
    printf '%s\n' "$out" | tail -n 20 >&2
    die "apt-get $* failed (exit $rc); the output's last lines are above"
  done
}

if [ ${#packages[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    die "missing $(list "${tools[@]}") and no apt-get here: install them with this system's package manager (Debian names: ${packages[*]}), then rerun 'bash tests/setup.sh'"
  fi
  if [ "$(id -u)" = 0 ]; then
    SUDO=()
  elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
    SUDO=(sudo -n)
  else
    echo "tests/setup.sh: missing test prerequisites: $(list "${tools[@]}")." >&2
    echo "tests/setup.sh: installing them needs root; run this, then rerun 'bash tests/setup.sh':" >&2
    echo "  sudo apt-get update && sudo apt-get install -y ${packages[*]}" >&2
    exit 1
  fi
  say "installing ${packages[*]} (missing: $(list "${tools[@]}"))"
  apt_get update -qq
  apt_get install -y -qq "${packages[@]}"
  hash -r
  say "installed ${packages[*]}"
fi

did=${#packages[@]}
if ! .venv/bin/python -c '' >/dev/null 2>&1; then
  say "no .venv: running the first command's install (./install.sh)"
  bash install.sh
  did=1
fi
if [ ! -d runtime/js/node_modules/onnxruntime-node ] || [ ! -d runtime/js/node_modules/onnxruntime-web ]; then
  say "installing the JavaScript engines: npm ci --prefix runtime/js --ignore-scripts"
  npm ci --prefix runtime/js --ignore-scripts --no-audit --no-fund --no-update-notifier --loglevel=error >/dev/null
  did=1
fi

if [ "$did" = 0 ]; then
  say "every test prerequisite is present (chromium, hey, cmake, c++, make, node, npm, .venv, runtime/js/node_modules): nothing to do"
else
  say "test prerequisites ready"
fi
