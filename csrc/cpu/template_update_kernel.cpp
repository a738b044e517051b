// CPU kernels of the TTVOS template update (math: ../template_update.cpp).
// The math and the code are in template_update_kernel_impl.h, compiled once per instruction set
// (cpu_isa_variants.h); the registered kernels call the copy that cpu::active_isa() picks.
#define VOS_CPU_KERNEL_BODY "template_update_kernel_impl.h"
#define VOS_CPU_KERNEL_NAMES(X) X(template_update_forward) X(template_update_backward_scores) X(template_update_backward)
#include "cpu_isa_variants.h"
