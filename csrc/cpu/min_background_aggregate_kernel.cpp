// CPU kernels of min-background aggregation (the public agame-vos ``softmax_aggregate`` rule).
// The math and the code are in min_background_aggregate_kernel_impl.h, compiled once per instruction set
// (cpu_isa_variants.h); the registered kernels call the copy that cpu::active_isa() picks.
#include <torch/library.h>

#define VOS_CPU_KERNEL_BODY "min_background_aggregate_kernel_impl.h"
#include "cpu_isa_variants.h"

namespace vos_kernels {

TORCH_LIBRARY_IMPL(vos_kernels, CPU, m) {
  m.impl("min_background_aggregate_forward", VOS_CPU_KERNEL(min_background_aggregate_forward_cpu));
  m.impl("min_background_aggregate_backward", VOS_CPU_KERNEL(min_background_aggregate_backward_cpu));
}

}  // namespace vos_kernels
