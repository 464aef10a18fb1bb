#!/usr/bin/env bash
# Builds bin/tandem and the static guest agents bin/tandem-guest-{amd64,arm64}.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
mkdir -p bin
ver="$(git describe --always --dirty 2>/dev/null || echo dev)"
go build -ldflags "-X main.version=$ver" -o bin/tandem ./cmd/tandem
for arch in amd64 arm64; do
  CGO_ENABLED=0 GOOS=linux GOARCH=$arch go build -trimpath -ldflags "-s -w -X main.version=$ver" \
    -o bin/tandem-guest-$arch ./cmd/tandem-guest
  CGO_ENABLED=0 GOOS=linux GOARCH=$arch go build -trimpath -ldflags "-s -w" \
    -o bin/tandem-fakerunner-$arch ./cmd/tandem-fakerunner
done
echo "build.sh: bin/tandem bin/tandem-guest-{amd64,arm64} bin/tandem-fakerunner-{amd64,arm64}"
