#!/usr/bin/env bash
# Builds bin/tandem and the static guest agents bin/tandem-guest-{amd64,arm64}.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
mkdir -p bin
ver="$(scripts/version.sh)"
go build -ldflags "-X main.version=$ver" -o bin/tandem ./cmd/tandem
for arch in amd64 arm64; do
  CGO_ENABLED=0 GOOS=linux GOARCH=$arch go build -trimpath -ldflags "-s -w -X main.version=$ver" \
    -o bin/tandem-guest-$arch ./cmd/tandem-guest
  CGO_ENABLED=0 GOOS=linux GOARCH=$arch go build -trimpath -ldflags "-s -w" \
    -o bin/tandem-fakerunner-$arch ./cmd/tandem-fakerunner
done
# For tests: tarballs laid out like GitHub's runner (run.sh, bin/Runner.Listener)
# whose "runner" is tandem-fakerunner, so runner images built with
# --runner-tarball start it exactly as they start GitHub's (run.sh --jitconfig).
for arch in amd64 arm64; do
  gh=$([ $arch = amd64 ] && echo x64 || echo arm64)
  d="$(mktemp -d)"
  mkdir -p "$d/bin"
  cp bin/tandem-fakerunner-$arch "$d/bin/Runner.Listener"
  printf '#!/bin/sh\n# Test stand-in for GitHub runner'"'"'s run.sh\nexec "$(dirname "$0")/bin/Runner.Listener" "$@"\n' >"$d/run.sh"
  chmod 755 "$d/run.sh" "$d/bin/Runner.Listener"
  tar -C "$d" --sort=name --mtime=@946684800 --owner=0 --group=0 --numeric-owner -czf \
    bin/fake-actions-runner-linux-$gh.tar.gz run.sh bin
  rm -rf "$d"
done
echo "build.sh: bin/tandem bin/tandem-guest-{amd64,arm64} bin/tandem-fakerunner-{amd64,arm64} bin/fake-actions-runner-linux-{x64,arm64}.tar.gz"
