#!/usr/bin/env bash
# Where does a TCG boot of the test image go? Boots bare QEMU (microvm, the
# same kernel and initramfs Tandem uses, probe mode: tandem-guest prints its
# marker and ends the VM at once) N times per kernel-command-line variant and
# prints the median wall time from QEMU start to QEMU exit. Each variant adds
# one change to the previous, so each line shows that change's effect.
#
#   bench/boot-steps.sh [DATA_DIR]     (default /var/lib/tandem; needs root)
set -euo pipefail
data="${1:-/var/lib/tandem}"
N="${N:-5}"
ref="$(cat "$data/images/refs/test-amd64")"
dir="$data/images/blobs/$ref"
kernel="$dir/vmlinux"; initrd="$dir/initrd.cpio"
[ -f "$kernel" ] || { echo "no test-amd64 image in $data: run tandem image build" >&2; exit 1; }

boot() { # machine append -> ms
  local m="$1" a="$2" s e
  s=$(date +%s%N)
  timeout 60 qemu-system-x86_64 -M "$m" -accel tcg -cpu max -m 256 -smp 1 -nodefaults -no-user-config \
    -nographic -no-reboot -serial stdio -kernel "$kernel" -initrd "$initrd" -append "$a tandem.probe=1" >/tmp/boot-steps.out 2>&1 || true
  e=$(date +%s%N)
  grep -q TANDEM-PROBE-OK /tmp/boot-steps.out || { echo "no probe marker with: $m | $a" >&2; cat /tmp/boot-steps.out >&2; exit 1; }
  echo $(( (e - s) / 1000000 ))
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
step() { # label machine append
  local t; t=$(for _ in $(seq "$N"); do boot "$2" "$3"; done | median)
  printf '%-58s %6s ms\n' "$1" "$t"
}
echo "median of $N TCG boots to tandem-guest's probe marker and QEMU exit"
step "ENVIRONMENT.md reference (rtc=off, ACPI on)" "microvm,x-option-roms=off,rtc=off" "console=ttyS0 reboot=t panic=-1 quiet"
step "+ RTC on (no 2 s CMOS clock timeouts)" "microvm,x-option-roms=off" "console=ttyS0 reboot=t panic=-1 quiet"
step "+ cryptomgr.notests (crypto self-tests)" "microvm,x-option-roms=off" "console=ttyS0 reboot=t panic=-1 quiet cryptomgr.notests"
khz=$(awk '/^cpu MHz/ {printf "%d", $4*1000; exit}' /proc/cpuinfo)
step "+ tsc_early_khz=$khz (no PIT calibration; see tsc.go)" "microvm,x-option-roms=off" "console=ttyS0 reboot=t panic=-1 quiet cryptomgr.notests tsc_early_khz=$khz"
step "  (rejected) + initcall_blacklist=init_kprobe_trace" "microvm,x-option-roms=off" "console=ttyS0 reboot=t panic=-1 quiet cryptomgr.notests tsc_early_khz=$khz initcall_blacklist=init_kprobe_trace"
