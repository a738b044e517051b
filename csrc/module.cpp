// The extension module vos_kernels._C: a plain Python module (the ops are registered with the
// dispatcher by static initialisers in the other files) plus build information.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "cpu/cpu_isa.h"

namespace {
// The build facts below are fixed at compile time (setup.py's defines) or, for the CPU kernels'
// instruction set, at the first call (cpu::active_isa()).
constexpr bool kCompiledWithCuda =
#ifdef VOS_WITH_CUDA
    true;
#else
    false;
#endif

// setup.py defines VOS_CPU_PORTABLE_BUILD=0 when VOS_KERNELS_CPU_FLAGS added flags (such as
// -march=native) that make the whole library specific to one kind of CPU.
constexpr bool kCpuPortableBuild =
#if defined(VOS_CPU_PORTABLE_BUILD) && !VOS_CPU_PORTABLE_BUILD
    false;
#else
    true;
#endif
}  // namespace

TORCH_LIBRARY_FRAGMENT(vos_kernels, m) {
  // Whether this build contains the CUDA kernels (queried by vos_kernels.available_backends).
  m.def("_compiled_with_cuda() -> bool", [] { return kCompiledWithCuda; });
  // The instruction set of the CPU kernels in this process: "default", "avx2" or "avx512".
  m.def("_cpu_isa() -> str", [] { return std::string(vos_kernels::cpu::isa_name(vos_kernels::cpu::active_isa())); });
  // Whether the library was built without extra CPU flags (then it runs on any x86-64).
  m.def("_cpu_portable_build() -> bool", [] { return kCpuPortableBuild; });
}

extern "C" {
// Importing vos_kernels._C loads the shared library, which runs the registrations above.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "vos_kernels compiled ops", -1, nullptr};
  return PyModule_Create(&module_def);
}
}
