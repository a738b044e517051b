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
"""
from __future__ import annotations

import os

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


def nvcc_flags() -> list[str]:
    """Flags of every CUDA translation unit (torch's cpp_extension adds its own -std and arch flags)."""
    return optimisation_flags() + ["--expt-relaxed-constexpr", "-lineinfo"]


def link_flags() -> list[str]:
    return ["-fopenmp"]


def cuda_arch_list() -> str:
    return os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_CUDA_ARCH_LIST
