#!/usr/bin/env bash
# The one-command demo on a fresh Debian 12 machine, as root: install the
# packages, build Tandem and its test images, run a command in a microVM,
# then bring up the whole system (`tandem up --demo`: control plane, SQLite
# and this host's agent) against ghfake, the GitHub emulator, and watch a
# workflow job on each architecture get its own fresh VM; it ends with the
# dashboard's address (and, at a terminal, keeps running).
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

# The all-in-one system against ghfake, the GitHub emulator, in this process
# (tandem up --demo): a job on each architecture, each in its own fresh VM.
# At a terminal Tandem keeps running until Ctrl-C, for a look at the
# dashboard; otherwise it exits once the jobs are done.
echo
echo '$ tandem up --demo'
if [ -t 0 ]; then
  exec bin/tandem up --demo
fi
exec bin/tandem up --demo --demo-exit
