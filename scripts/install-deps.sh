#!/usr/bin/env bash
# Installs what Tandem needs on a Debian 12 host, from Debian's packages only.
# Idempotent. Needs root.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "install-deps.sh: run as root (sudo)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
# arm64 guests boot Debian's arm64 kernel: its package comes from the arm64 archive.
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  qemu-system-x86 qemu-system-arm qemu-utils qemu-user-static \
  busybox-static e2fsprogs nftables iproute2 kmod ca-certificates git make >/dev/null
if ! command -v go >/dev/null && [ ! -x /usr/local/go/bin/go ]; then
  echo "install-deps.sh: Go 1.26 is needed at /usr/local/go (or on PATH)" >&2
  exit 1
fi
echo "install-deps.sh: done"
