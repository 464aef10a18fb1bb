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
  busybox-static e2fsprogs nftables iproute2 kmod ca-certificates git make \
  mmdebstrap binfmt-support docker-registry >/dev/null
# Each host's registry mirror is docker-registry run by the agent itself,
# with a config of its own; the package's service would hold port 5000 on
# every address.
if [ -d /run/systemd/system ]; then
  systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi
# Runner images for another architecture run that architecture's package
# scripts through qemu-user, which the kernel finds through binfmt_misc.
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
for emu in qemu-aarch64 qemu-x86_64; do
  if [ "$emu" != "qemu-$(uname -m)" ] && [ ! -e /proc/sys/fs/binfmt_misc/$emu ]; then
    update-binfmts --enable $emu
  fi
done
if ! command -v go >/dev/null && [ ! -x /usr/local/go/bin/go ]; then
  echo "install-deps.sh: Go 1.26 is needed at /usr/local/go (or on PATH)" >&2
  exit 1
fi
echo "install-deps.sh: done"
