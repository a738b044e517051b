// CPU kernels of min-background aggregation (the public agame-vos ``softmax_aggregate`` rule).
// The math and the code are in min_background_aggregate_kernel_impl.h, compiled once per instruction set
// (cpu_isa_variants.h); the registered kernels call the copy that cpu::active_isa() picks.
#define VOS_CPU_KERNEL_BODY "min_background_aggregate_kernel_impl.h"
#define VOS_CPU_KERNEL_NAMES(X) X(min_background_aggregate_forward) X(min_background_aggregate_backward)
#include "cpu_isa_variants.h"
