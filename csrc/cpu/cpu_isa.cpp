// The run-time choice of the CPU kernels' instruction set (see cpu_isa.h), and the ops that
// report it: _cpu_isa() (tests check with it that a forced copy really runs) and
// _cpu_portable_build().
#include "cpu_isa.h"

#include <c10/util/Exception.h>
#include <torch/library.h>

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

namespace {
std::string cpu_isa_name() { return cpu::isa_name(cpu::active_isa()); }

// setup.py defines VOS_CPU_PORTABLE_BUILD=0 when VOS_KERNELS_CPU_FLAGS added flags (such as
// -march=native) that make the whole library specific to one kind of CPU.
bool cpu_portable_build() {
#if defined(VOS_CPU_PORTABLE_BUILD) && !VOS_CPU_PORTABLE_BUILD
  return false;
#else
  return true;
#endif
}
}  // namespace

TORCH_LIBRARY_FRAGMENT(vos_kernels, m) {
  // The instruction set of the CPU kernels in this process: "default", "avx2" or "avx512".
  m.def("_cpu_isa() -> str", &cpu_isa_name);
  // Whether the library was built without extra CPU flags (then it runs on any x86-64).
  m.def("_cpu_portable_build() -> bool", &cpu_portable_build);
}

}  // namespace vos_kernels
