// CPU kernels of the top-k L2-affinity memory read (schemas and math: csrc/memory_read.cpp).
// The math and the code are in memory_read_kernel_impl.h, compiled once per instruction set
// (cpu_isa_variants.h); the registered kernels call the copy that cpu::active_isa() picks.
#include <torch/library.h>

#define VOS_CPU_KERNEL_BODY "memory_read_kernel_impl.h"
#include "cpu_isa_variants.h"

namespace vos_kernels {

TORCH_LIBRARY_IMPL(vos_kernels, CPU, m) {
  m.impl("memory_read_topk_forward", VOS_CPU_KERNEL(memory_read_topk_forward_cpu));
  m.impl("memory_read_topk_backward", VOS_CPU_KERNEL(memory_read_topk_backward_cpu));
}

}  // namespace vos_kernels
