#!/usr/bin/env bash
# Runs Tandem's tests: vet, the fast tests on amd64 and (under qemu-user) on
# arm64, then the whole suite with the race detector, real VMs included (root).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
command -v go >/dev/null || { echo "test.sh: Go 1.26 is needed at /usr/local/go or on PATH" >&2; exit 1; }
scripts/build.sh
# Everything the tests run, checked once, up front: a missing program is
# named with its Debian package here rather than failing deep in a build.
bin/tandem deps --for test >/dev/null
# Images are built once per run and shared by every test package.
export TANDEM_TEST_DATA="${TANDEM_TEST_DATA:-/var/tmp/tandem-test}"
export TANDEM_BIN="$PWD/bin"
mkdir -p "$TANDEM_TEST_DATA"
if [ "$(id -u)" = 0 ]; then
  for arch in amd64 arm64; do
    bin/tandem --data-dir "$TANDEM_TEST_DATA" image build --kind test --arch $arch
  done
  # The runner images (Debian, systemd, Docker): a minute for amd64, a few
  # for arm64 (its package scripts run under qemu-user). Their "GitHub
  # runner" is tandem-fakerunner in the official runner's layout.
  runner_image() {
    bin/tandem --data-dir "$1" image build --kind runner --arch "$2" \
      --runner-tarball bin/fake-actions-runner-linux-"$3".tar.gz | awk '{print $1}'
  }
  # (The progress goes to stderr; stdout's one line starts with the id.)
  id_amd64="$(runner_image "$TANDEM_TEST_DATA" amd64 x64)"
  runner_image "$TANDEM_TEST_DATA" arm64 arm64 >/dev/null
  # The same inputs give the same image: build amd64 again into an empty
  # store (the package cache shared) and compare.
  again="$(mktemp -d /var/tmp/tandem-repro.XXXXXX)"
  mkdir -p "$again/images" && ln -s "$TANDEM_TEST_DATA/cache" "$again/cache"
  id_again="$(runner_image "$again" amd64 x64)"
  rm -rf "$again"
  if [ "$id_amd64" != "$id_again" ]; then
    echo "runner image not reproducible: $id_amd64 then $id_again" >&2
    exit 1
  fi
  # The Debian packages, each installed by apt with what it depends on into
  # a clean Debian chroot; packaging's tests check them there, offline.
  for arch in amd64 arm64; do
    scripts/package-chroot.sh $arch "$TANDEM_TEST_DATA/pkg/$arch" >/dev/null
  done
fi
unformatted="$(gofmt -l cmd internal bench packaging test)"
[ -z "$unformatted" ] || { echo "gofmt needed on: $unformatted" >&2; exit 1; }
go vet ./...
# The other architecture's build of the fast tests, under qemu-user.
case "$(go env GOHOSTARCH)" in
  amd64) other=arm64 emu=qemu-aarch64-static ;;
  *) other=amd64 emu=qemu-x86_64-static ;;
esac
echo "== fast tests, $other under qemu-user"
GOARCH=$other go test -short -count=1 -exec $emu ./...
echo "== all tests, amd64, race detector"
# The whole-system tests (test/e2e) run on their own after the rest: their
# VMs boot under TCG on this machine's cores, and beside the other
# packages' VMs and race-detector runs they starved (boots and TLS
# handshakes timing out).
go test -race -count=1 -timeout 40m $(go list ./... | grep -v '/test/e2e$')
echo "== whole-system tests, amd64, race detector"
go test -race -count=1 -timeout 30m ./test/e2e
