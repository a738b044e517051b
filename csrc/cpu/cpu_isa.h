// Run-time choice of the instruction set of the CPU kernels.
//
// The default build carries no -march flag (it runs on any x86-64). The hot CPU kernels are
// compiled several times instead, once per instruction set, each copy in its own namespace
// (see cpu_isa_variants.h):
//   cpu_default  the compiler's baseline (x86-64: SSE2), the only copy on other architectures
//   cpu_avx2     x86-64-v3: AVX2, FMA, BMI1/2, F16C, LZCNT, MOVBE
//   cpu_avx512   x86-64-v4: v3 + AVX-512 F/BW/CD/DQ/VL
// and each entry point calls the copy that active_isa() names: the best one this CPU supports
// (cpuid, through __builtin_cpu_supports, which also checks that the OS saves the wider
// registers), lowered by the environment variable VOS_KERNELS_CPU_ISA=default|avx2|avx512 (read
// once, at the first kernel call), so that tests can run every copy on one machine.
#pragma once

namespace vos_kernels {
namespace cpu {

enum class Isa : int { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };

// Whether this build holds the avx2/avx512 copies (x86-64 with GCC; elsewhere only cpu_default).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VOS_CPU_MULTI_ISA 1
#else
#define VOS_CPU_MULTI_ISA 0
#endif

// The best instruction set of this CPU among those the build holds.
Isa best_supported_isa();

// The copy the kernels run: best_supported_isa(), or lower if VOS_KERNELS_CPU_ISA asks for it
// (asking for more than the CPU has warns and runs the best supported one; an unknown value is
// an error). Fixed for the life of the process.
Isa active_isa();

const char* isa_name(Isa isa);

// IsaDispatch<&cpu_default::f, &cpu_avx2::f, &cpu_avx512::f>::call has f's signature and calls
// the copy of f that active_isa() names (the registered CPU kernel; see VOS_CPU_KERNEL).
template <auto Default, auto Avx2, auto Avx512>
struct IsaDispatch;

template <typename R, typename... Args, R (*Default)(Args...), R (*Avx2)(Args...), R (*Avx512)(Args...)>
struct IsaDispatch<Default, Avx2, Avx512> {
  static R call(Args... args) {
    switch (active_isa()) {
      case Isa::kAvx512:
        return Avx512(args...);
      case Isa::kAvx2:
        return Avx2(args...);
      default:
        return Default(args...);
    }
  }
};

}  // namespace cpu
}  // namespace vos_kernels

// The CPU kernel to register for entry point `fn` (defined, with one signature, in every ISA
// namespace by cpu_isa_variants.h).
#if VOS_CPU_MULTI_ISA
#define VOS_CPU_KERNEL(fn)                                                                              \
  (&::vos_kernels::cpu::IsaDispatch<&::vos_kernels::cpu_default::fn, &::vos_kernels::cpu_avx2::fn,       \
                                    &::vos_kernels::cpu_avx512::fn>::call)
#else
#define VOS_CPU_KERNEL(fn) (&::vos_kernels::cpu_default::fn)
#endif
