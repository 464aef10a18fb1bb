#!/usr/bin/env bash
# Counts x86 TCG boots that hang before userspace, with and without telling
# the guest the host's TSC rate (tsc_early_khz). Each boot is bare QEMU in
# probe mode (tandem-guest prints its marker and ends the VM); a boot without
# the marker within 15 s is a hang.
#
#   bench/tcg-tsc-hangs.sh [DATA_DIR]     (default /var/lib/tandem; N=40 boots per side)
set -euo pipefail
data="${1:-/var/lib/tandem}"
N="${N:-40}"
dir="$data/images/blobs/$(cat "$data/images/refs/test-amd64")"
khz=$(awk '/^cpu MHz/ {printf "%d", $4*1000; exit}' /proc/cpuinfo)
count() { # extra kernel args -> hangs
  local hangs=0
  for _ in $(seq "$N"); do
    timeout 15 qemu-system-x86_64 -M microvm,x-option-roms=off -accel tcg -cpu max -m 256 -smp 1 \
      -nodefaults -no-user-config -nographic -no-reboot -serial stdio -kernel "$dir/vmlinux" \
      -initrd "$dir/initrd.cpio" -append "console=ttyS0 reboot=t panic=-1 quiet cryptomgr.notests tandem.probe=1 $1" \
      2>&1 | grep -q TANDEM-PROBE-OK || hangs=$((hangs + 1))
  done
  echo "$hangs"
}
echo "without tsc_early_khz: $(count "") hangs in $N boots"
echo "with tsc_early_khz=$khz: $(count "tsc_early_khz=$khz") hangs in $N boots"
