"""The compiler flags of `vos_kernels._C`, defined once.

Every path that compiles our C++/CUDA sources takes its flags from here: `setup.py` (the real
build), `scripts/check_cuda_compile.py` (the nvcc check against a CPU torch) and `make gpu-ready`
(the real CUDA build against a CUDA torch). Nothing else spells a compiler flag.

Environment knobs (documented in the README):
  VOS_KERNELS_CPU_FLAGS   extra CPU flags for every C++ file, default none (a portable x86-64
                          build: the CPU kernels carry their own AVX2 / AVX-512 copies, picked
                          at run time, csrc/cpu/cpu_isa.h); `-march=native` for a local build
                          tuned to this CPU only
  VOS_KERNELS_DEBUG=1     -O0 -g builds
  TORCH_CUDA_ARCH_LIST    CUDA targets, default DEFAULT_CUDA_ARCH_LIST

The C++ standard is the one torch's cpp_extension passes for the installed torch (c++17 with
torch 2.11, c++20 with 2.13): we pass it ourselves, so that the real build (torch adds
no -std when one is given) and the nvcc check compile with the same one.
"""
from __future__ import annotations

import functools
import inspect
import os
import re

# A100 (8.0), RTX 30xx / A10 (8.6), H100 / H200 (9.0), plus PTX of the newest so that later GPUs
# JIT-compile it.
DEFAULT_CUDA_ARCH_LIST = "8.0;8.6;9.0+PTX"


def debug_build() -> bool:
    return os.environ.get("VOS_KERNELS_DEBUG") == "1"


def optimisation_flags() -> list[str]:
    """-O3 for release builds; -g only in debug builds (it made the CUDA .so 27 MB)."""
    return ["-O0", "-g"] if debug_build() else ["-O3", "-g0"]


def user_cpu_flags() -> list[str]:
    """The user's extra CPU flags (VOS_KERNELS_CPU_FLAGS); empty by default, i.e. portable."""
    return os.environ.get("VOS_KERNELS_CPU_FLAGS", "").split()


def cxx_flags() -> list[str]:
    """Flags of every C++ translation unit."""
    return optimisation_flags() + ["-fopenmp", "-fdiagnostics-color=always"] + user_cpu_flags()


# The architectures `make gpu-ready` and the nvcc check build: A100 and H100/H200 SASS, and PTX of
# sm_90 for newer GPUs (sm_86 GPUs run the sm_80 SASS; the user build adds a tuned sm_86 copy).
GPU_READY_ARCH_LIST = "8.0;9.0+PTX"


@functools.lru_cache(maxsize=None)
def cxx_standard_flag() -> str:
    """The `-std=c++NN` that torch's BuildExtension adds for the installed torch.

    Read from the source of BuildExtension.build_extensions (its `append_std*_if_no_std_present`
    helper), the place where the real build takes it from; raises if torch changed that code.
    """
    from torch.utils.cpp_extension import BuildExtension

    found = set(re.findall(r"cpp_flag_prefix \+ '(c\+\+\d+)'", inspect.getsource(BuildExtension.build_extensions)))
    if len(found) != 1:
        raise RuntimeError("build_flags: cannot tell which C++ standard torch's BuildExtension uses "
                           f"(found {sorted(found) or 'none'}); update cxx_standard_flag()")
    return f"-std={found.pop()}"


def nvcc_optimisation_flags() -> list[str]:
    """-O3 for release builds (nvcc has no -g0: without -g/-G it emits no debug info; -lineinfo keeps
    only the line table that profilers need); -g -G (host and device debug info) in debug builds."""
    return ["-O0", "-g", "-G"] if debug_build() else ["-O3", "-lineinfo"]


def nvcc_flags() -> list[str]:
    """Flags of every CUDA translation unit, besides torch's COMMON_NVCC_FLAGS and the arch flags
    (cuda_arch_flags), which the real build's cpp_extension adds and the nvcc check copies."""
    # --resource-usage only prints ptxas's registers, stack and spill stores per kernel (make gpu-ready
    # reads them from the build log); it changes no code.
    return nvcc_optimisation_flags() + ["--expt-relaxed-constexpr", "--resource-usage", cxx_standard_flag()]


def cuda_define_macros() -> list[tuple[str, str]]:
    """Macros of the CUDA build (module.cpp's _compiled_with_cuda() reads VOS_WITH_CUDA)."""
    return [("VOS_WITH_CUDA", "1")]


def cuda_arch_flags(arch_list: str) -> list[str]:
    """The -gencode flags of `arch_list` (TORCH_CUDA_ARCH_LIST syntax, e.g. "8.0;9.0+PTX"), made by
    torch's own cpp_extension function, so the real build and the nvcc check cannot differ."""
    from torch.utils.cpp_extension import _get_cuda_arch_flags

    saved = os.environ.get("TORCH_CUDA_ARCH_LIST")
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
    try:
        return _get_cuda_arch_flags()
    finally:
        if saved is None:
            del os.environ["TORCH_CUDA_ARCH_LIST"]
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = saved


def link_flags() -> list[str]:
    return ["-fopenmp"]


def cuda_arch_list() -> str:
    return os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_CUDA_ARCH_LIST
