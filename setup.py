"""Build of the `vos_kernels._C` extension.

The CPU kernels (csrc/*.cpp, csrc/cpu/*.cpp) are always built; the CUDA kernels
(csrc/cuda/*.cu) too when torch has CUDA and a toolkit is found. Knobs (environment):

  VOS_KERNELS_CUDA=auto|1|0   build the CUDA kernels: auto (default) = when torch.version.cuda
                              and CUDA_HOME are both there; 1 = required (fail otherwise); 0 = never
  TORCH_CUDA_ARCH_LIST        CUDA targets, default "8.0;8.6;9.0+PTX" (A100, RTX 30xx/A10, H100/H200)
  MAX_JOBS                    parallel compile jobs (ninja), default: the CPU count
  VOS_KERNELS_CPU_FLAGS       extra CPU flags, default none: a portable build that runs on any
                              x86-64, its hot kernels compiled for AVX2 and AVX-512 too and
                              picked at run time (csrc/cpu/cpu_isa.h); "-march=native" makes a
                              build for this CPU only (it then fails tests/test_portable_build.py's
                              ISA check, which skips it)
  VOS_KERNELS_DEBUG=1         -O0 -g builds

Build with `pip install --no-build-isolation .` (or `-e .`) so the torch you already have is
the one the extension is compiled against.
"""
import glob
import os
import sys

from setuptools import setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:  # pragma: no cover - the message is the point
    sys.exit("vos_kernels: torch must be installed before building (and build with "
             "`pip install --no-build-isolation .` so the installed torch is used)")

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import build_flags  # noqa: E402  (the one definition of our compiler flags)
import build_probe  # noqa: E402  (the built extension must raise its C++ errors, not crash)


def _log(msg: str) -> None:
    print(f"[vos_kernels build] {msg}", flush=True)


def _want_cuda() -> bool:
    mode = os.environ.get("VOS_KERNELS_CUDA", "auto").strip().lower()
    if mode not in ("auto", "1", "0"):
        sys.exit(f"vos_kernels: VOS_KERNELS_CUDA must be auto, 1 or 0, got {mode!r}")
    have_torch_cuda = torch.version.cuda is not None
    have_toolkit = CUDA_HOME is not None
    if mode == "0":
        _log("CUDA kernels: off (VOS_KERNELS_CUDA=0)")
        return False
    if have_torch_cuda and have_toolkit:
        return True
    reason = ("torch is a CPU build (torch.version.cuda is None)" if not have_torch_cuda
              else "no CUDA toolkit found (set CUDA_HOME)")
    if mode == "1":
        sys.exit(f"vos_kernels: VOS_KERNELS_CUDA=1 but {reason}")
    _log(f"CUDA kernels: skipped, {reason}")
    return False


def _extension():
    cpu_arch = build_flags.user_cpu_flags()
    cxx = build_flags.cxx_flags()
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    # Lets the extension report whether it was built with the portable default (the ISA check
    # of tests/test_portable_build.py applies to those builds only).
    define_macros = [("VOS_CPU_PORTABLE_BUILD", "0" if cpu_arch else "1")]
    include_dirs = [os.path.join(ROOT, "csrc")]
    if _want_cuda():
        arch_list = build_flags.cuda_arch_list()
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        # Our -std and -gencode flags are explicit, so cpp_extension adds none of its own.
        nvcc = build_flags.nvcc_flags() + build_flags.cuda_arch_flags(arch_list)
        _log(f"CUDA kernels: on, CUDA_HOME={CUDA_HOME}, TORCH_CUDA_ARCH_LIST={arch_list}")
        _log(f"  nvcc flags: {' '.join(nvcc)}")
        define_macros += build_flags.cuda_define_macros()
        ext = CUDAExtension("vos_kernels._C", sources, include_dirs=include_dirs, define_macros=define_macros,
                            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=build_flags.link_flags())
    else:
        ext = CppExtension("vos_kernels._C", sources, include_dirs=include_dirs, define_macros=define_macros,
                           extra_compile_args={"cxx": cxx}, extra_link_args=build_flags.link_flags())
    _log(f"building vos_kernels._C from {len(sources)} sources with torch {torch.__version__} "
         f"(CPU flags: {' '.join(cpu_arch) or 'portable'}; jobs: {os.environ.get('MAX_JOBS', 'all cores')})")
    for s in sources:
        _log(f"  {s}")
    return ext


class BuildAndProbe(BuildExtension):
    """cpp_extension's build, then scripts/build_probe.py on the library it wrote: an extension whose
    C++ argument errors crash the interpreter (a second, static libstdc++) is removed and refused."""

    def run(self):
        super().run()
        library = self.get_ext_fullpath("vos_kernels._C")
        reason = build_probe.probe(library, compiler=os.environ.get("CXX", ""))
        if reason:
            os.remove(library)
            print(reason, file=sys.stderr, flush=True)
            sys.exit(build_probe.REFUSED)
        _log("probe: C++ argument errors reach Python as RuntimeError")


setup(ext_modules=[_extension()], cmdclass={"build_ext": BuildAndProbe})
