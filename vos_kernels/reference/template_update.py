"""TTVOS long-term template update (Eq. 2-3)."""
from __future__ import annotations

import math

import torch

from ._precision import compute_dtype


def template_update_reference(key: torch.Tensor, value: torch.Tensor, template: torch.Tensor | None = None,
                              weight: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """key (B, Nt, P), value (B, Ct, P), template (B, Nt, Ct) or None, weight (B,) -> (B, Nt, Ct).

    I = softmax((key @ value^T) * scale, dim=-1)  (default scale 1/sqrt(P));
    returns I when template is None, else template / (1 + w) + I * w / (1 + w).
    """
    dtype = compute_dtype(key.dtype)
    k, v = key.to(dtype), value.to(dtype)
    scale = 1.0 / math.sqrt(k.shape[-1]) if scale is None else scale
    incoming = torch.softmax(torch.bmm(k, v.transpose(1, 2)) * scale, dim=-1)
    if template is None:
        return incoming.to(key.dtype)
    w = weight.to(dtype).view(-1, 1, 1)
    return (template.to(dtype) / (1 + w) + incoming * w / (1 + w)).to(key.dtype)
