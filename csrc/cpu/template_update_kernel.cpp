// CPU kernels of the TTVOS template update (math: ../template_update.cpp).
// The math and the code are in template_update_kernel_impl.h, compiled once per instruction set
// (cpu_isa_variants.h); the registered kernels call the copy that cpu::active_isa() picks.
#include <torch/library.h>

#define VOS_CPU_KERNEL_BODY "template_update_kernel_impl.h"
#include "cpu_isa_variants.h"

namespace vos_kernels {

TORCH_LIBRARY_IMPL(vos_kernels, CPU, m) {
  m.impl("template_update_forward", VOS_CPU_KERNEL(template_update_forward_cpu));
  m.impl("template_update_backward_scores", VOS_CPU_KERNEL(template_update_backward_scores_cpu));
  m.impl("template_update_backward", VOS_CPU_KERNEL(template_update_backward_cpu));
}

}  // namespace vos_kernels
