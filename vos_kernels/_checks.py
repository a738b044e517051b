"""Input validation shared by the ops: errors name the argument, what was expected and what arrived."""
from __future__ import annotations

import math

import torch
import torch._guards  # detect_fake_mode (loaded with torch already)

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(op: str, name: str, value: object, *, min_dim: int | None = None, dim: int | None = None,
                 dtypes=FLOAT_DTYPES) -> torch.Tensor:
    """Raise TypeError/ValueError unless `value` is a tensor of an allowed dtype and rank."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")
    if dtypes is not None and value.dtype not in dtypes:
        raise TypeError(f"{op}: {name} must have a floating dtype in "
                        f"{tuple(str(d).replace('torch.', '') for d in dtypes)}, got {value.dtype}")
    if dim is not None and value.dim() != dim:
        raise ValueError(f"{op}: {name} must have {dim} dimensions, got shape {tuple(value.shape)}")
    if min_dim is not None and value.dim() < min_dim:
        raise ValueError(f"{op}: {name} must have at least {min_dim} dimensions, got shape {tuple(value.shape)}")
    return value


def _check_same(op: str, what: str, error: type, tensors: dict[str, torch.Tensor | None]):
    """All given tensors (None skipped) share the attribute `what` ("device" or "dtype"); returns it."""
    items = [(n, t) for n, t in tensors.items() if t is not None]
    first_name, first = items[0]
    for name, t in items[1:]:
        if getattr(t, what) != getattr(first, what):
            raise error(f"{op}: {name} must {'be on' if what == 'device' else 'have'} the same {what} as "
                        f"{first_name} ({getattr(first, what)}), got {getattr(t, what)}")
    return getattr(first, what)


def check_same_device(op: str, **tensors: torch.Tensor | None) -> torch.device:
    """All given tensors (None skipped) on one device (ValueError otherwise); returns it."""
    return _check_same(op, "device", ValueError, tensors)


def check_same_dtype(op: str, **tensors: torch.Tensor | None) -> torch.dtype:
    """All given tensors (None skipped) of one dtype (TypeError otherwise); returns it."""
    return _check_same(op, "dtype", TypeError, tensors)


def check_positive_float(op: str, name: str, value: object, *, allow_zero: bool = False) -> float:
    """A finite float > 0 (>= 0 with allow_zero); TypeError/ValueError naming `name` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{op}: {name} must be a float, got {type(value).__name__}")
    if not -math.inf < value < math.inf:  # NaN and +-inf (comparisons: traceable by torch.compile)
        raise ValueError(f"{op}: {name} must be a finite number, got {value}")
    if not (value > 0 or (allow_zero and value == 0)):
        raise ValueError(f"{op}: {name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return float(value)


def check_int(op: str, name: str, value: object, *, minimum: int) -> int:
    """A Python int (or SymInt) >= minimum; a float, even 2.0, is refused rather than truncated."""
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value}")
    return value


# The smallest clamp the aggregation ops can honour in their compute type: below it, 1 - eps
# rounds to 1 and a hard probability of 1 would give q / (1 - q) = 1 / 0. float32 (also for
# float16/bfloat16 inputs) has 2^-24 between 1 - ulp and 1, float64 2^-53.
CLAMP_EPS_FLOOR = {torch.float64: 2.0 ** -53}
CLAMP_EPS_FLOOR_FLOAT32 = 2.0 ** -24


def check_clamp_eps(op: str, eps: object, dtype: torch.dtype) -> float:
    """The clamp of the aggregation ops, c(x) = clamp(x, eps, 1 - eps): eps must lie in (0, 0.5).
    Returns the eps the kernels use: eps raised to CLAMP_EPS_FLOOR of the compute type (float64
    for float64 inputs, float32 otherwise), so that every allowed eps gives finite odds."""
    eps = check_positive_float(op, "eps", eps)
    if not eps < 0.5:
        raise ValueError(f"{op}: eps must be in (0, 0.5), got {eps}")
    return max(eps, CLAMP_EPS_FLOOR.get(dtype, CLAMP_EPS_FLOOR_FLOAT32))


def values_are_visible(t: torch.Tensor) -> bool:
    """Whether a check may look at t's values: not while torch.compile or a fake-tensor trace
    (opcheck, export) runs, nor while a CUDA graph is being captured."""
    if torch.compiler.is_compiling() or torch._guards.detect_fake_mode(t) is not None:
        return False
    return not (t.is_cuda and torch.cuda.is_current_stream_capturing())


def check_finite_non_negative(op: str, name: str, t: torch.Tensor) -> None:
    """ValueError unless every value of t is finite and >= 0 (skipped where values are not
    visible, see values_are_visible; on a GPU the check waits for t)."""
    if not values_are_visible(t):
        return
    bad = ~(torch.isfinite(t) & (t >= 0))
    if bool(bad.any()):
        raise ValueError(f"{op}: {name} must be finite and >= 0, got {t[bad].flatten()[:4].tolist()} at "
                         f"{bad.nonzero()[:4].flatten().tolist()}")

