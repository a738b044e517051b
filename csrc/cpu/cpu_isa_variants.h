// Compiles the kernel body named by VOS_CPU_KERNEL_BODY once per instruction set (cpu_isa.h),
// then registers the CPU kernels named by the X-macro VOS_CPU_KERNEL_NAMES(X): for each name,
// dispatcher op vos_kernels::<name> gets the ISA-dispatched entry point <name>_cpu.
// No include guard: a kernel's .cpp defines both macros and includes this once:
//   #define VOS_CPU_KERNEL_BODY "soft_aggregate_kernel_impl.h"
//   #define VOS_CPU_KERNEL_NAMES(X) X(soft_aggregate_forward) X(soft_aggregate_backward)
//   #include "cpu_isa_variants.h"
//
// Each copy sits in its own namespace (VOS_CPU_ISA = cpu_default, cpu_avx2, cpu_avx512), so no
// function of one copy can stand in for another's at link time. The avx2/avx512 copies are
// compiled under `#pragma GCC target`, which applies to the functions *defined* inside the
// region only: the body must include every header it needs at its top, and is first included
// for cpu_default (outside any target region), so std::, c10:: and at:: inline functions and
// templates are parsed there, once, and their instantiations (COMDAT symbols, which the linker
// may pick from any object file) are baseline code. scripts/check_portable_isa.py proves it on
// the built .so: every function holding an AVX2/AVX-512 instruction is in cpu_avx2/cpu_avx512.
//
// Inside the body, VOS_CPU_ISA_AVX512 (0/1) selects hand-written AVX-512 paths: GCC does not
// redefine __AVX512F__ under `#pragma GCC target` in C++, so the body must not test it.
#include <torch/library.h>

#include "cpu_isa.h"

#if !defined(VOS_CPU_KERNEL_BODY) || !defined(VOS_CPU_KERNEL_NAMES)
#error "define VOS_CPU_KERNEL_BODY (the kernel body header) and VOS_CPU_KERNEL_NAMES before including cpu_isa_variants.h"
#endif

#define VOS_CPU_ISA cpu_default
#define VOS_CPU_ISA_AVX512 0
#include VOS_CPU_KERNEL_BODY
#undef VOS_CPU_ISA
#undef VOS_CPU_ISA_AVX512

#if VOS_CPU_MULTI_ISA
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2,f16c,lzcnt,movbe,popcnt")
#define VOS_CPU_ISA cpu_avx2
#define VOS_CPU_ISA_AVX512 0
#include VOS_CPU_KERNEL_BODY
#undef VOS_CPU_ISA
#undef VOS_CPU_ISA_AVX512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2,f16c,lzcnt,movbe,popcnt,avx512f,avx512bw,avx512cd,avx512dq,avx512vl")
#define VOS_CPU_ISA cpu_avx512
#define VOS_CPU_ISA_AVX512 1
#include VOS_CPU_KERNEL_BODY
#undef VOS_CPU_ISA
#undef VOS_CPU_ISA_AVX512
#pragma GCC pop_options
#endif

#undef VOS_CPU_KERNEL_BODY

TORCH_LIBRARY_IMPL(vos_kernels, CPU, m) {
#define VOS_CPU_REGISTER(name) m.impl(#name, VOS_CPU_KERNEL(name##_cpu));
  VOS_CPU_KERNEL_NAMES(VOS_CPU_REGISTER)
#undef VOS_CPU_REGISTER
}

#undef VOS_CPU_KERNEL_NAMES
