#include "textflag.h"

// func rdtsc() uint64 — the generic timer's virtual count, which is what
// QEMU's TCG hands an emulated x86 guest as its TSC on an arm64 host.
TEXT ·rdtsc(SB), NOSPLIT, $0-8
	ISB	$15
	MRS	CNTVCT_EL0, R0
	MOVD	R0, ret+0(FP)
	RET
