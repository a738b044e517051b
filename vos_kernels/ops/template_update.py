"""template_update: the TTVOS template outer-product update (ops.md §3).

Backends: reference for now (fused CPU/CUDA/Triton kernels: issue #5).
"""
from __future__ import annotations

import torch

from .._checks import check_positive_float, check_same_device, check_same_dtype, check_tensor
from .._dispatch import resolve_backend
from ..reference.template_update import template_update_reference

OP = "template_update"
IMPLEMENTED = ("reference",)


def output_shape(key_shape, value_shape) -> tuple[int, int, int]:
    """(B, Nt, P), (B, Ct, P) -> (B, Nt, Ct)."""
    return (key_shape[0], key_shape[1], value_shape[1])


def validate(key, value, template, weight, scale) -> None:
    check_tensor(OP, "key", key, dim=3)
    check_tensor(OP, "value", value, dim=3)
    if template is not None:
        check_tensor(OP, "template", template, dim=3)
        if weight is None:
            raise ValueError(f"{OP}: weight (B,) is required when a template is given")
    if weight is not None:
        if template is None:
            raise ValueError(f"{OP}: weight was given without a template (the initial template takes no weight)")
        check_tensor(OP, "weight", weight, dim=1)
    check_same_device(OP, key=key, value=value, template=template, weight=weight)
    check_same_dtype(OP, key=key, value=value, template=template, weight=weight)
    (b, nt, p), (bv, ct, pv) = key.shape, value.shape
    if bv != b or pv != p:
        raise ValueError(f"{OP}: value must be (B, Ct, P) with B = {b} and P = {p} like key, got shape "
                         f"{tuple(value.shape)}")
    if p == 0:
        raise ValueError(f"{OP}: key and value must have P >= 1 positions, got P = 0")
    if template is not None and tuple(template.shape) != (b, nt, ct):
        raise ValueError(f"{OP}: template must be (B, Nt, Ct) = {(b, nt, ct)}, got shape {tuple(template.shape)}")
    if weight is not None and weight.shape[0] != b:
        raise ValueError(f"{OP}: weight must be (B,) = ({b},), got shape {tuple(weight.shape)}")
    if scale is not None:
        check_positive_float(OP, "scale", scale)


def template_update(key: torch.Tensor, value: torch.Tensor, template: torch.Tensor | None = None,
                    weight: torch.Tensor | None = None, *, scale: float | None = None,
                    backend: str | None = None) -> torch.Tensor:
    """TTVOS template update: key (B, Nt, P), value (B, Ct, P) -> (B, Nt, Ct).

    I = softmax(key @ value^T * scale, dim=-1) (default scale 1/sqrt(P)); returns I when
    template is None, else template / (1 + w) + I * w / (1 + w) with w = weight[b] >= 0.
    """
    validate(key, value, template, weight, scale)
    resolve_backend(OP, backend, key.device, IMPLEMENTED)
    return template_update_reference(key, value, template, weight, scale=scale)
