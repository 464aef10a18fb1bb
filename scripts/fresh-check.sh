#!/usr/bin/env bash
# Runs the README's set-up as a new machine would: in a clean Debian 12
# chroot (only the required and important packages, as a minimal install
# has), `scripts/install-deps.sh && scripts/test.sh` in a clone of this
# checkout's HEAD at /src (what is committed, as CI sees it), with the Go
# toolchain at /usr/local/go. What
# install-deps.sh forgets to name fails here, though the development machine
# has it from elsewhere. As root; about as long as the tests themselves,
# plus a minute for the chroot.
#
#   scripts/fresh-check.sh [DIR]          DIR defaults to /var/tmp/tandem-fresh
#   scripts/fresh-check.sh DIR -- CMD...  run CMD in the chroot instead of the tests
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "fresh-check.sh: run as root (sudo)" >&2; exit 1; }
dir="${1:-/var/tmp/tandem-fresh}"
shift || true
cmd=(bash -c 'cd /src && scripts/install-deps.sh && scripts/test.sh')
if [ "${1:-}" = -- ]; then
  shift
  cmd=("$@")
fi
command -v mmdebstrap >/dev/null || { echo "fresh-check.sh: needs mmdebstrap (apt-get install mmdebstrap)" >&2; exit 1; }
if [ ! -x "$dir/usr/bin/apt-get" ]; then
  rm -rf "$dir"
  mmdebstrap --variant=important bookworm "$dir"
fi
cleanup() { umount -R "$dir" 2>/dev/null || true; }
trap cleanup EXIT
mkdir -p "$dir/usr/local/go"
rm -rf "$dir/src"
git clone -q "$PWD" "$dir/src"
# The tree's root is a mount point of its own, as a machine's / is (`ip
# netns` makes / a slave mount, which needs one).
mount --bind "$dir" "$dir" && mount --make-private "$dir"
mount -t proc proc "$dir/proc"
mount --rbind /sys "$dir/sys" && mount --make-rslave "$dir/sys"
mount --rbind /dev "$dir/dev" && mount --make-rslave "$dir/dev"
mount -t tmpfs tmpfs "$dir/run"
mount --bind /usr/local/go "$dir/usr/local/go" && mount -o remount,bind,ro "$dir/usr/local/go"
# binfmt_misc is the kernel's, shared with the host: install-deps.sh
# registers qemu-user there if it is not yet.
cp /etc/resolv.conf "$dir/etc/resolv.conf"
# The host's CA bundle, for a network whose TLS proxy only the host trusts.
cp /etc/ssl/certs/ca-certificates.crt "$dir/etc/host-ca-certificates.crt"
chroot "$dir" env -i HOME=/root TERM="${TERM:-dumb}" SSL_CERT_FILE=/etc/host-ca-certificates.crt \
  PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "${cmd[@]}"
