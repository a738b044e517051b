// CPU kernels of soft aggregation (RGMP Eq. 1).
// The math and the code are in soft_aggregate_kernel_impl.h, compiled once per instruction set
// (cpu_isa_variants.h); the registered kernels call the copy that cpu::active_isa() picks.
#define VOS_CPU_KERNEL_BODY "soft_aggregate_kernel_impl.h"
#define VOS_CPU_KERNEL_NAMES(X) X(soft_aggregate_forward) X(soft_aggregate_backward)
#include "cpu_isa_variants.h"
