// CPU kernels of clip window attention (ops.md §4; schemas: csrc/clip_window_attention.cpp).
// The math and the code are in clip_window_attention_kernel_impl.h, compiled once per instruction set
// (cpu_isa_variants.h); the registered kernels call the copy that cpu::active_isa() picks.
#define VOS_CPU_KERNEL_BODY "clip_window_attention_kernel_impl.h"
#define VOS_CPU_KERNEL_NAMES(X) X(clip_window_attention_forward) X(clip_window_attention_backward)
#include "cpu_isa_variants.h"
