#!/usr/bin/env bash
# Installs Tandem's Debian package for ARCH into a clean Debian 12 chroot, as
# apt would on a new host: DIR/tandem_<version>_<arch>.deb (built by
# scripts/package.sh) and DIR/root, a minimal tree (apt, systemd) with the
# package and everything it depends on installed; recommended packages are
# not, so what the package needs must be in its Depends. The packaging tests
# check the result offline.
#
# For an ARCH other than the host's, installing would run every package's
# scripts under qemu-user (five minutes and more); apt only simulates the
# install (so the Depends must resolve on ARCH), and DIR/root holds the
# package's files alone (dpkg-deb -x), enough to run its static binaries.
# DIR/mode says which: "installed" or "extracted". As root.
#   scripts/package-chroot.sh amd64|arm64 DIR
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# = 2 ] || { echo "usage: $0 amd64|arm64 DIR" >&2; exit 2; }
arch=$1 dir=$2
[ "$(id -u)" = 0 ] || { echo "package-chroot.sh: run as root" >&2; exit 1; }
rm -rf "$dir"
mkdir -p "$dir"
deb="$(TANDEM_DIST="$dir" scripts/package.sh "$arch")"
# mmdebstrap's apt hands the .deb's path to dpkg inside the chroot; the
# hook makes it exist there.
install=(mmdebstrap --quiet --variant=apt --architectures="$arch" --include=systemd --include="$deb"
  --hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount --aptopt='Acquire::Retries "3"')
if [ "$arch" = "$(dpkg --print-architecture)" ]; then
  "${install[@]}" bookworm "$dir/root" >/dev/null
  echo installed >"$dir/mode"
else
  "${install[@]}" --simulate bookworm "$dir/simulated" >/dev/null
  rm -rf "$dir/simulated"
  dpkg-deb -x "$deb" "$dir/root"
  echo extracted >"$dir/mode"
fi
