#!/usr/bin/env bash
# Runs Tandem's tests: vet, the fast tests on amd64 and (under qemu-user) on
# arm64, then the whole suite with the race detector, real VMs included (root).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
scripts/build.sh
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
  bin/tandem --data-dir "$TANDEM_TEST_DATA" image build --kind runner --arch amd64 \
    --runner-tarball bin/fake-actions-runner-linux-x64.tar.gz
  bin/tandem --data-dir "$TANDEM_TEST_DATA" image build --kind runner --arch arm64 \
    --runner-tarball bin/fake-actions-runner-linux-arm64.tar.gz
fi
unformatted="$(gofmt -l cmd internal bench)"
[ -z "$unformatted" ] || { echo "gofmt needed on: $unformatted" >&2; exit 1; }
go vet ./...
echo "== fast tests, arm64 under qemu-user"
GOARCH=arm64 go test -short -count=1 -exec qemu-aarch64-static ./...
echo "== all tests, amd64, race detector"
go test -race -count=1 -timeout 40m ./...
