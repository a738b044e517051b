"""L2-affinity memory read with optional top-k, STCN style (materialises the affinity)."""
from __future__ import annotations

import math

import torch

from .._checks import values_are_visible
from ._precision import compute_dtype


def memory_read_reference(query_key: torch.Tensor, memory_key: torch.Tensor, memory_value: torch.Tensor,
                          top_k: int | None = None, scale: float | None = None) -> torch.Tensor:
    """query_key (B, Ck, N), memory_key (B, Ck, M), memory_value (B, Cv, M) -> (B, Cv, N).

    s[b, i, j] = (2 <mk_i, qk_j> - |mk_i|^2) * scale  (default scale 1/sqrt(Ck));
    w = softmax over i of s (dense), or over the top_k largest s per query j (zero elsewhere);
    out[b, :, j] = sum_i w[b, i, j] mv[b, :, i].
    """
    dtype = compute_dtype(query_key.dtype)
    qk, mk, mv = (t.to(dtype) for t in (query_key, memory_key, memory_value))
    ck, m = qk.shape[1], mk.shape[2]
    scale = 1.0 / math.sqrt(ck) if scale is None else scale
    affinity = 2 * torch.bmm(mk.transpose(1, 2), qk) - mk.pow(2).sum(1).unsqueeze(2)   # (B, M, N)
    affinity = affinity * scale
    if top_k is None or top_k >= m:
        weights = torch.softmax(affinity, dim=1)
    else:
        values, indices = torch.topk(affinity, k=top_k, dim=1)                           # (B, k, N)
        weights = _ties_to_lowest_index(affinity, values[:, -1:], top_k)
        if weights is None:
            weights = torch.zeros_like(affinity).scatter(1, indices, torch.softmax(values, dim=1))
    return torch.bmm(mv, weights).to(query_key.dtype)


def _ties_to_lowest_index(affinity: torch.Tensor, kth: torch.Tensor, top_k: int) -> torch.Tensor | None:
    """The top-k softmax weights (B, M, N) when the k-th largest score of some query is tied
    beyond k (torch.topk then picks any of the tied entries): the tie keeps the lowest memory
    indices, the rule of the fused kernels (docs/ops.md). None when no query has such a tie (the
    usual case in eager mode: torch.topk's choice is then the only one). kth: (B, 1, N)."""
    # The shortcut looks at the data, which a trace (torch.compile, opcheck's fake tensors) cannot:
    # no query has more than k scores >= its k-th one (one comparison and one count per score).
    if values_are_visible(affinity) and not bool(((affinity >= kth).sum(1) > top_k).any()):
        return None
    greater = affinity > kth
    tied = affinity == kth
    needed = top_k - greater.sum(1, keepdim=True)
    chosen = greater | (tied & (tied.cumsum(1, dtype=torch.int32) <= needed))
    return torch.softmax(affinity.masked_fill(~chosen, float("-inf")), dim=1)

