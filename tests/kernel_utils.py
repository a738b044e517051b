"""Helpers shared by the kernel tests: which backends to test here, devices, tolerances."""
from __future__ import annotations

import pytest
import torch

import vos_kernels


def backend_params(implemented=("cpu", "cuda", "triton", "reference")) -> list:
    """pytest params for every backend; unavailable ones are skipped with the reason."""
    status = vos_kernels.available_backends()
    params = []
    for name in implemented:
        ok, why = status[name]
        params.append(pytest.param(name, id=name, marks=() if ok else pytest.mark.skip(reason=f"{name}: {why}")))
    return params


def device_of(backend: str) -> str:
    """The device a backend's test tensors live on (Triton uses CPU under the interpreter)."""
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def dtypes_of(backend: str) -> list[torch.dtype]:
    """The dtypes a backend claims."""
    if backend in ("cpu", "reference"):
        return [torch.float32, torch.float64, torch.float16, torch.bfloat16]
    if backend == "cuda":
        return [torch.float32, torch.float64, torch.float16, torch.bfloat16]
    # Triton: the interpreter cannot run bfloat16 arithmetic faithfully; on a GPU it is tested.
    return [torch.float32, torch.float16] + ([torch.bfloat16] if torch.cuda.is_available() else [])


def tolerance(dtype: torch.dtype) -> float:
    return {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
