// CPU kernels of the top-k L2-affinity memory read (schemas and math: csrc/memory_read.cpp).
// The math and the code are in memory_read_kernel_impl.h, compiled once per instruction set
// (cpu_isa_variants.h); the registered kernels call the copy that cpu::active_isa() picks.
#define VOS_CPU_KERNEL_BODY "memory_read_kernel_impl.h"
#define VOS_CPU_KERNEL_NAMES(X) X(memory_read_topk_forward) X(memory_read_topk_backward)
#include "cpu_isa_variants.h"
