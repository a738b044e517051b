// CPU kernels of soft aggregation (RGMP Eq. 1).
// The math and the code are in soft_aggregate_kernel_impl.h, compiled once per instruction set
// (cpu_isa_variants.h); the registered kernels call the copy that cpu::active_isa() picks.
#include <torch/library.h>

#define VOS_CPU_KERNEL_BODY "soft_aggregate_kernel_impl.h"
#include "cpu_isa_variants.h"

namespace vos_kernels {

TORCH_LIBRARY_IMPL(vos_kernels, CPU, m) {
  m.impl("soft_aggregate_forward", VOS_CPU_KERNEL(soft_aggregate_forward_cpu));
  m.impl("soft_aggregate_backward", VOS_CPU_KERNEL(soft_aggregate_backward_cpu));
}

}  // namespace vos_kernels
