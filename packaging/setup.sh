#!/usr/bin/env bash
# Prepares a fresh Debian 12 machine to build, run and test Tandem:
# the Debian packages the tests and benchmarks drive (QEMU, the NBD tools,
# fio, nbdkit, a guest kernel and busybox for the lab guest, iproute2 for
# network namespaces; tmux for the TUI's end-to-end test, lintian for the .deb, hyperfine for the
# start-up figures; libssl3, whose libcrypto tags replication frames, named because the tests
# check that path and nothing else here is sure to pull it in), then the npm packages, Bun among them.
# Safe to run again: every step is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  fio qemu-utils qemu-system-x86 qemu-block-extra
  libnbd-bin nbdkit python3-libnbd
  busybox-static linux-image-amd64 cpio
  iproute2 iputils-ping nftables iptables
  sqlite3 libssl3
  tmux lintian hyperfine
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x node_modules/.bin/bun ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing npm packages (Bun among them)" >&2
  npm ci --no-audit --no-fund --loglevel=error
fi
echo "setup: ready ($(node_modules/.bin/bun --version 2>/dev/null || echo 'bun missing'))" >&2
