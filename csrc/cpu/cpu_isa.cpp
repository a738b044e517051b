// The run-time choice of the CPU kernels' instruction set (see cpu_isa.h); reported by the op
// _cpu_isa() (csrc/module.cpp), with which tests check that a forced copy really runs.
#include "cpu_isa.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>

namespace vos_kernels {
namespace cpu {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "default";
  }
}

Isa best_supported_isa() {
#if VOS_CPU_MULTI_ISA
  // The copies are compiled for exactly these feature sets (cpu_isa_variants.h); the
  // x86-64-v3/v4 names of __builtin_cpu_supports test all of them, XSAVE state included.
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return Isa::kAvx512;
  if (__builtin_cpu_supports("x86-64-v3")) return Isa::kAvx2;
#endif
  return Isa::kDefault;
}

namespace {

Isa choose_isa() {
  const Isa best = best_supported_isa();
  const char* env = std::getenv("VOS_KERNELS_CPU_ISA");
  if (env == nullptr || *env == '\0') return best;
  const std::string asked(env);
  Isa want;
  if (asked == "default") {
    want = Isa::kDefault;
  } else if (asked == "avx2") {
    want = Isa::kAvx2;
  } else if (asked == "avx512") {
    want = Isa::kAvx512;
  } else {
    TORCH_CHECK(false, "VOS_KERNELS_CPU_ISA must be one of default, avx2, avx512 (or unset), got '", asked, "'");
  }
  if (static_cast<int>(want) > static_cast<int>(best)) {
    TORCH_WARN("VOS_KERNELS_CPU_ISA=", asked, " asks for more than this CPU (or build) supports; running the ",
               isa_name(best), " kernels");
    return best;
  }
  return want;
}

}  // namespace

Isa active_isa() {
  static const Isa isa = choose_isa();  // thread-safe, once per process
  return isa;
}

}  // namespace cpu
}  // namespace vos_kernels
