#!/usr/bin/env bash
# The one-command demo on a fresh Debian 12 machine: install the packages,
# build Tandem and its test images, and run a command in a fresh microVM.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
for arch in amd64 arm64; do
  bin/tandem image build --kind test --arch $arch
done
echo
echo '$ tandem run -- sh -c "echo hello from \$(uname -n), kernel \$(uname -r) \$(uname -m)"'
bin/tandem run -- sh -c 'echo hello from $(uname -n), kernel $(uname -r) $(uname -m)'
echo '$ tandem run --arch arm64 -- uname -m'
bin/tandem run --arch arm64 -- uname -m
