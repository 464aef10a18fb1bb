#!/usr/bin/env bash
# Builds Debian packages of Tandem with dpkg-deb:
#   dist/tandem_<version>_<arch>.deb for each ARCH given (default: amd64 arm64)
# Each holds /usr/bin/tandem (static), the guest agents for both
# architectures (an amd64 host emulates arm64 guests and the reverse), the
# systemd units, /etc/default/tandem-agent and an example config. Needs Go
# and dpkg-deb; no root.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
arches=("$@")
[ ${#arches[@]} -gt 0 ] || arches=(amd64 arm64)
ver="$(scripts/version.sh)"
out="${TANDEM_DIST:-$PWD/dist}"
mkdir -p "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# Everything but /usr/bin/tandem is the same for every package.
common="$work/common"
mkdir -p "$common/usr/lib/tandem"
for arch in amd64 arm64; do
  for prog in tandem-guest tandem-fakerunner; do
    CGO_ENABLED=0 GOOS=linux GOARCH=$arch go build -trimpath -ldflags "-s -w -X main.version=$ver" \
      -o "$common/usr/lib/tandem/$prog-$arch" ./cmd/$prog
  done
done
install -D -m 0644 -t "$common/lib/systemd/system" packaging/systemd/*.service
install -D -m 0644 packaging/tandem-agent.default "$common/etc/default/tandem-agent"
install -D -m 0644 packaging/config.yaml.example "$common/usr/share/doc/tandem/examples/config.yaml"
install -D -m 0644 README.md "$common/usr/share/doc/tandem/README.md"
for arch in "${arches[@]}"; do
  case $arch in
    amd64) native=qemu-system-x86 other=qemu-system-arm ;;
    arm64) native=qemu-system-arm other=qemu-system-x86 ;;
    *) echo "package.sh: unknown architecture $arch (want amd64 or arm64)" >&2; exit 1 ;;
  esac
  root="$work/$arch"
  cp -a "$common" "$root"
  CGO_ENABLED=0 GOOS=linux GOARCH=$arch go build -trimpath -ldflags "-s -w -X main.version=$ver" \
    -o "$root/usr/bin/tandem" ./cmd/tandem
  mkdir -p "$root/DEBIAN"
  install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$root/DEBIAN/"
  install -m 0644 packaging/debian/conffiles "$root/DEBIAN/"
  # What a host running VMs needs (internal/hostdeps: QEMU and the VM
  # network); what emulating the other architecture, the registry mirror
  # and building images need is recommended.
  sed -e "s/@VERSION@/$ver/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$(du -sk --exclude=DEBIAN "$root" | cut -f1)/" \
    -e "s/@DEPENDS@/$native, qemu-utils, nftables, e2fsprogs, ca-certificates/" \
    -e "s/@RECOMMENDS@/$other, docker-registry, mmdebstrap, arch-test, qemu-user-static, binfmt-support, kmod/" \
    packaging/debian/control.in >"$root/DEBIAN/control"
  find "$root" -depth -newermt @0 -exec touch -h -d @946684800 {} +
  deb="$out/tandem_${ver}_${arch}.deb"
  dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
  echo "$deb"
done
