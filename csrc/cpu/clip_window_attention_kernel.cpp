// CPU kernels of clip window attention (ops.md §4; schemas: csrc/clip_window_attention.cpp).
// The math and the code are in clip_window_attention_kernel_impl.h, compiled once per instruction set
// (cpu_isa_variants.h); the registered kernels call the copy that cpu::active_isa() picks.
#include <torch/library.h>

#define VOS_CPU_KERNEL_BODY "clip_window_attention_kernel_impl.h"
#include "cpu_isa_variants.h"

namespace vos_kernels {

TORCH_LIBRARY_IMPL(vos_kernels, CPU, m) {
  m.impl("clip_window_attention_forward", VOS_CPU_KERNEL(clip_window_attention_forward_cpu));
  m.impl("clip_window_attention_backward", VOS_CPU_KERNEL(clip_window_attention_backward_cpu));
}

}  // namespace vos_kernels
