// The extension module vos_kernels._C: a plain Python module (the ops are registered with the
// dispatcher by static initialisers in the other files) plus build information.
#include <Python.h>
#include <torch/library.h>

namespace {
bool compiled_with_cuda() {
#ifdef VOS_WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace

TORCH_LIBRARY_FRAGMENT(vos_kernels, m) {
  // Whether this build contains the CUDA kernels (queried by vos_kernels.available_backends).
  m.def("_compiled_with_cuda() -> bool", &compiled_with_cuda);
}

extern "C" {
// Importing vos_kernels._C loads the shared library, which runs the registrations above.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "vos_kernels compiled ops", -1, nullptr};
  return PyModule_Create(&module_def);
}
}
