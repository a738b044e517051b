"""Loads the compiled extension and says which backends exist on this machine.

Importing this module never fails: a missing or broken `vos_kernels._C` is recorded with
its reason, and the `cpu`/`cuda` backends then report themselves unavailable (the
`reference` and, on GPUs, `triton` backends still work).
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os

import torch

BACKENDS = ("cpu", "cuda", "triton", "reference")


def _load_extension() -> tuple[bool, str]:
    try:
        importlib.import_module("vos_kernels._C")
    except Exception as exc:  # ImportError, or an undefined symbol from a torch/ABI mismatch
        return False, (f"the C++ extension vos_kernels._C could not be loaded ({type(exc).__name__}: {exc}); "
                       "build it with `pip install --no-build-isolation -e .`")
    return True, "C++ extension vos_kernels._C loaded"


EXTENSION_LOADED, EXTENSION_STATUS = _load_extension()


def extension_has_cuda() -> bool:
    """Whether the loaded extension was compiled with its CUDA kernels."""
    return EXTENSION_LOADED and bool(torch.ops.vos_kernels._compiled_with_cuda())


def triton_interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _triton_import_status() -> tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed (pip install triton)"
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:
        return False, f"triton failed to import ({type(exc).__name__}: {exc})"
    return True, f"triton {triton.__version__}"


def backend_status(name: str) -> tuple[bool, str]:
    """(available, reason) for one backend on this machine."""
    if name == "reference":
        return True, "eager PyTorch, always available"
    if name == "cpu":
        return EXTENSION_LOADED, EXTENSION_STATUS
    if name == "cuda":
        if not EXTENSION_LOADED:
            return False, EXTENSION_STATUS
        if not extension_has_cuda():
            return False, ("the extension was built without CUDA kernels (torch "
                           f"{torch.__version__} {'has no CUDA' if torch.version.cuda is None else 'has CUDA'}; "
                           "rebuild with a CUDA toolkit and VOS_KERNELS_CUDA=1)")
        if not torch.cuda.is_available():
            return False, "no CUDA device is visible (torch.cuda.is_available() is False)"
        return True, f"CUDA kernels built; device {torch.cuda.get_device_name()}"
    if name == "triton":
        ok, why = _triton_import_status()
        if not ok:
            return False, why
        if torch.cuda.is_available():
            return True, f"{why} on {torch.cuda.get_device_name()}"
        if triton_interpreting():
            return True, f"{why} in the CPU interpreter (TRITON_INTERPRET=1; slow, for testing)"
        return False, f"{why} is installed but there is no GPU (set TRITON_INTERPRET=1 to run it on CPU, slowly)"
    raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")


def available_backends() -> dict[str, tuple[bool, str]]:
    """Every backend with (available here, why or why not).

    >>> vos_kernels.available_backends()["cpu"]
    (True, 'C++ extension vos_kernels._C loaded')
    """
    return {name: backend_status(name) for name in BACKENDS}
