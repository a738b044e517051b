"""Min-background aggregation of per-object two-way softmaxes (the public agame-vos
``softmax_aggregate`` rule used by CRVOS and TTVOS), the formula taken literally."""
import torch

from ._precision import compute_dtype


def min_background_aggregate_reference(q: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """q (B, O, 2, *spatial) -> (B, O + 1, *spatial), channel 0 the background.

    q[:, k, 0] is object k's "not object k" probability, q[:, k, 1] its "object k" one.
    With c(x) = clamp(x, eps, 1 - eps):
        b = min_k q_k0;  odds_0 = c(b) / c(1 - b);  odds_k = c(q_k1) / c(q_k0);
        out_j = odds_j / sum_i odds_i      (summed in the order bg, 1..O, as the public code).
    The gradient of the min goes to the selected object (torch.min's rule); where a clamp is
    active the gradient through it is zero (torch.clamp's rule).
    """
    x = q.to(compute_dtype(q.dtype))
    not_object, is_object = x[:, :, 0], x[:, :, 1]
    background = not_object.min(dim=1, keepdim=True).values
    background_odds = background.clamp(eps, 1 - eps) / (1 - background).clamp(eps, 1 - eps)
    object_odds = is_object.clamp(eps, 1 - eps) / not_object.clamp(eps, 1 - eps)
    odds = torch.cat([background_odds, object_odds], dim=1)
    return (odds / odds.sum(dim=1, keepdim=True)).to(q.dtype)
