"""Choosing the backend of one call.

Precedence: the `backend=` argument of the call, else the innermost `use_backend(...)` block,
else the environment variable `VOS_KERNELS_BACKEND`, else "auto". "auto" takes the first
backend, in the op's order of preference for the tensors' device, that the op implements
and that is available here; when none is, it falls back to the eager reference with a
warning that names the reason. An explicitly requested backend that cannot serve the call
raises an error that says why.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import threading
import warnings
from typing import Iterator, Sequence

import torch

from ._library import BACKENDS, backend_status, triton_interpreting
from ._thread_state import thread_local_value

ENV_VAR = "VOS_KERNELS_BACKEND"
_CHOICES = BACKENDS + ("auto",)
# The innermost use_backend(...) block, kept twice:
# - a ContextVar, read in eager mode: context-local, so a block in one thread or asyncio task
#   never changes the kernels that another runs (a new thread starts outside any block);
# - a thread-local mirror, read while torch.compile traces (Dynamo cannot trace
#   ContextVar.get, but traces and guards on a threading.local attribute).
_context: contextvars.ContextVar[str | None] = contextvars.ContextVar("vos_kernels_backend", default=None)
_mirror = threading.local()
_warned: set[tuple[str, str]] = set()


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run every vos_kernels op in the block on backend `name` (unless a call names its own).

    >>> with vos_kernels.use_backend("reference"):
    ...     out = model(frames)          # the same model on the eager reference ops

    Context-local (contextvars): it applies to the calling thread or asyncio task only. Under
    torch.compile the backend is resolved when a graph is traced, from the thread's innermost
    block, and the graph calls that backend's kernels; Dynamo guards on it, so calling a
    compiled function inside a block it was not traced under traces it again (one recompile)
    rather than running the other backend. (Tracing reads the thread's block: two asyncio
    tasks of one thread that compile concurrently inside different blocks would share it.)
    """
    _validate_name(name, "use_backend(name)")
    token = _context.set(name)
    try:
        with thread_local_value(_mirror, "name", name):
            yield
    finally:
        _context.reset(token)


def _validate_name(name: object, where: str) -> str:
    if not isinstance(name, str) or name not in _CHOICES:
        raise ValueError(f"{where} must be one of {_CHOICES}, got {name!r}")
    return name


def requested_backend(backend: str | None) -> str:
    """The backend asked for by the call, the context or the environment ("auto" if none)."""
    if backend is not None:
        return _validate_name(backend, "backend")
    block = getattr(_mirror, "name", None) if torch.compiler.is_compiling() else _context.get()
    if block is not None:
        return block
    env = os.environ.get(ENV_VAR)
    if env:
        return _validate_name(env.strip().lower(), f"the environment variable {ENV_VAR}")
    return "auto"


def _device_error(op: str, backend: str, device: torch.device) -> str | None:
    """Why `backend` cannot run on tensors of `device` (None when it can)."""
    if backend == "cpu" and device.type != "cpu":
        return f"{op}: backend 'cpu' needs CPU tensors, got tensors on {device}"
    if backend == "cuda" and device.type != "cuda":
        return f"{op}: backend 'cuda' needs CUDA tensors, got tensors on {device}"
    if backend == "triton" and device.type != "cuda" and not (device.type == "cpu" and triton_interpreting()):
        return (f"{op}: backend 'triton' needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1 set "
                f"before triton is imported), got tensors on {device}")
    return None


_DEFAULT_ORDER = {"cpu": ("cpu",), "cuda": ("cuda", "triton")}


def resolve_backend(op: str, backend: str | None, device: torch.device, implemented: Sequence[str],
                    preference: dict[str, Sequence[str]] | None = None) -> str:
    """The concrete backend for one call of `op` on tensors of `device`.

    implemented: the backends this op has, e.g. ("cpu", "cuda", "triton", "reference").
    preference: per device type, the order "auto" tries (default: cpu -> ("cpu",),
    cuda -> ("cuda", "triton")); the reference is always the last resort.
    """
    name = requested_backend(backend)
    if name != "auto":
        if name not in implemented:
            raise NotImplementedError(f"{op}: backend {name!r} is not implemented for this op; "
                                      f"it has {tuple(implemented)}")
        why = _device_error(op, name, device)
        if why:
            raise ValueError(why)
        ok, reason = backend_status(name)
        if not ok:
            raise RuntimeError(f"{op}: backend {name!r} is unavailable: {reason}")
        return name
    order = (preference or {}).get(device.type) or _DEFAULT_ORDER.get(device.type, ())
    reasons = []
    for candidate in order:
        if candidate not in implemented:
            reasons.append(f"{candidate}: not implemented for {op}")
            continue
        ok, reason = backend_status(candidate)
        if ok:
            return candidate
        reasons.append(f"{candidate}: {reason}")
    if reasons and (op, device.type) not in _warned:
        _warned.add((op, device.type))
        warnings.warn(f"{op}: no fused backend for {device.type} tensors ({'; '.join(reasons)}); "
                      "using the eager reference", RuntimeWarning, stacklevel=3)
    return "reference"


def would_serve(op: str, device_type: str, available: Sequence[str], **shape) -> tuple[str, str | None]:
    """Which backend "auto" picks for `op` on a `device_type` device where the backends in
    `available` load, and why it cannot serve these sizes (None when it can); no device needed.

    shape: the sizes the backends' limits depend on (see vos_kernels.triton.support.unsupported),
    e.g. would_serve("clip_window_attention", "cuda", ("triton",), window=(2, 7, 7), head_dim=512).
    The Triton backend's limits come from vos_kernels.triton.support; a CUDA kernel's, from its op
    module's `cuda_unsupported` where it has one (clip_window_attention's shared memory, judged
    against the smallest GPU we build for): "auto" then tries Triton first, as the op does on a GPU.
    """
    import importlib
    module = importlib.import_module(f"vos_kernels.ops.{op}")
    order = list(_DEFAULT_ORDER.get(device_type, ()))
    cuda_limit = getattr(module, "cuda_unsupported", None)
    if "cuda" in order and cuda_limit is not None and cuda_limit(**shape) is not None and "triton" in available:
        order.remove("cuda")
        order.insert(order.index("triton") + 1, "cuda")
    for candidate in order:
        if candidate in module.IMPLEMENTED and candidate in available:
            if candidate == "cuda":
                return candidate, cuda_limit(**shape) if cuda_limit is not None else None
            if candidate != "triton":
                return candidate, None
            from .triton.support import unsupported
            return candidate, unsupported(op, **shape)
    return "reference", None
