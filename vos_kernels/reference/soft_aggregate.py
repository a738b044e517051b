"""Soft aggregation of objects (RGMP Eq. 1), the contract's formula taken literally."""
import torch

from ._precision import compute_dtype


def soft_aggregate_reference(prob: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """prob (B, O, *spatial) in [0, 1] -> (B, O + 1, *spatial), channel 0 the background.

    bg = prod_o (1 - p_o);  q = clamp(cat([bg, p]), eps, 1 - eps);
    out = softmax(log(q / (1 - q)), dim=1).
    """
    p = prob.to(compute_dtype(prob.dtype))
    bg = torch.prod(1 - p, dim=1, keepdim=True)
    q = torch.cat([bg, p], dim=1).clamp(eps, 1 - eps)
    logits = torch.log(q / (1 - q))
    return torch.softmax(logits, dim=1).to(prob.dtype)
