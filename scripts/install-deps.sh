#!/usr/bin/env bash
# Installs what Tandem, its build, its demo and its tests need on a Debian 12
# host, from Debian's packages only, each named: with --no-install-recommends
# a package that arrives only as another's Recommends would be missing on a
# new machine. internal/hostdeps lists the programs Tandem runs and the
# package of each; its tests fail if a package it names is missing here.
# Idempotent. Needs root. `scripts/fresh-check.sh` runs this and the tests
# in a clean Debian chroot, to find what a new machine lacks.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "install-deps.sh: run as root (sudo)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
# arm64 guests boot Debian's arm64 kernel: its package comes from the arm64 archive.
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
fi
packages=(
  # VMs: QEMU for both architectures, overlay disks, the VM network
  qemu-system-x86 qemu-system-arm qemu-utils nftables iproute2 kmod
  # images: root filesystems, kernels and busybox from Debian's archive
  busybox-static e2fsprogs ca-certificates
  # runner images: mmdebstrap, and arch-test (only a Recommends of it) and
  # qemu-user through binfmt_misc for a tree of the other architecture
  mmdebstrap arch-test qemu-user-static binfmt-support
  # each host's registry mirror
  docker-registry
  # building: git stamps the version; gcc and libc6-dev (only a Recommends
  # of gcc) build the race detector's runtime for `go test -race`
  git gcc libc6-dev
  # tests: lz4 is the reference encoder the kernel decompressor is checked
  # against; prometheus ships promtool, which lints the control plane's /metrics
  lz4 prometheus
  # the PostgreSQL store's tests start servers of their own (pgtest) with
  # postgresql-15's initdb and postgres, as the postgres system user when root
  postgresql
  # the dashboard's browser test drives headless Chromium (chromedp)
  chromium
)
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
# Each host's registry mirror is docker-registry run by the agent itself,
# with a config of its own; the package's service would hold port 5000 on
# every address.
# Prometheus is installed for promtool only: its server would scrape and
# store on port 9090.
# PostgreSQL is installed for the tests' own servers: the package's main
# cluster would listen on localhost port 5432.
if [ -d /run/systemd/system ]; then
  systemctl disable --now docker-registry >/dev/null 2>&1 || true
  systemctl disable --now prometheus >/dev/null 2>&1 || true
  systemctl disable --now postgresql >/dev/null 2>&1 || true
fi
# pgtest runs initdb and postgres as this user when the tests run as root
# (they refuse to run as root); postgresql-common creates it.
id postgres >/dev/null || { echo "install-deps.sh: no postgres user after installing postgresql" >&2; exit 1; }
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
