"""Triton kernels of soft aggregation (math: csrc/cpu/soft_aggregate_kernel.cpp).

One program handles BLOCK pixels of one batch item and loops over the O objects, so each
object plane is read once per pass; everything is computed in float32.
"""
import torch
import triton
import triton.language as tl

from . import configs


@triton.jit
def _ratio(x, eps):
    # clamp by comparisons, which keep a NaN (tl.minimum/maximum would drop it): NaN in, NaN out
    q = tl.where(x < eps, eps, tl.where(x > 1.0 - eps, 1.0 - eps, x))
    return q / (1.0 - q)


@triton.jit
def _soft_aggregate_fwd_kernel(prob_ptr, out_ptr, O, S, eps, BLOCK: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < S
    prob_base = prob_ptr + b * O * S + offs
    out_base = out_ptr + b * (O + 1) * S + offs
    bg = tl.full([BLOCK], 1.0, tl.float32)
    ratio_sum = tl.zeros([BLOCK], tl.float32)
    for o in range(O):
        x = tl.load(prob_base + o * S, mask=inside, other=0.0).to(tl.float32)
        bg *= 1.0 - x
        ratio_sum += _ratio(x, eps)
    r_bg = _ratio(bg, eps)
    inv = 1.0 / (ratio_sum + r_bg)
    tl.store(out_base, (r_bg * inv).to(out_ptr.dtype.element_ty), mask=inside)
    for o in range(O):
        x = tl.load(prob_base + o * S, mask=inside, other=0.0).to(tl.float32)
        tl.store(out_base + (o + 1) * S, (_ratio(x, eps) * inv).to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _soft_aggregate_bwd_kernel(grad_out_ptr, prob_ptr, grad_prob_ptr, prefix_ptr, O, S, eps, BLOCK: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < S
    prob_base = prob_ptr + b * O * S + offs
    prefix_base = prefix_ptr + b * O * S + offs
    grad_out_base = grad_out_ptr + b * (O + 1) * S + offs
    grad_prob_base = grad_prob_ptr + b * O * S + offs
    # Pass 1: prefix products (kept in float32 scratch), R = sum r, and the dominant channel d
    # (largest r) with its upstream gradient g_d. g_c - dot is formed as (g_c - g_d) - D with
    # D = sum_c out_c (g_c - g_d): no cancellation when out_d ~ 1 (see the CPU kernel).
    bg = tl.full([BLOCK], 1.0, tl.float32)
    ratio_sum = tl.zeros([BLOCK], tl.float32)
    r_max = tl.full([BLOCK], -1.0, tl.float32)
    g_max = tl.zeros([BLOCK], tl.float32)
    for o in range(O):
        x = tl.load(prob_base + o * S, mask=inside, other=0.0).to(tl.float32)
        g = tl.load(grad_out_base + (o + 1) * S, mask=inside, other=0.0).to(tl.float32)
        tl.store(prefix_base + o * S, bg, mask=inside)
        bg *= 1.0 - x
        r = _ratio(x, eps)
        ratio_sum += r
        g_max = tl.where(r > r_max, g, g_max)
        r_max = tl.maximum(r, r_max)
    g_bg = tl.load(grad_out_base, mask=inside, other=0.0).to(tl.float32)
    r_bg = _ratio(bg, eps)
    g_max = tl.where(r_bg > r_max, g_bg, g_max)
    inv = 1.0 / (ratio_sum + r_bg)
    shift = r_bg * (g_bg - g_max)
    for o in range(O):
        x = tl.load(prob_base + o * S, mask=inside, other=0.0).to(tl.float32)
        g = tl.load(grad_out_base + (o + 1) * S, mask=inside, other=0.0).to(tl.float32)
        shift += _ratio(x, eps) * (g - g_max)
    shift *= inv
    gq_bg = tl.where((bg >= eps) & (bg <= 1.0 - eps), ((g_bg - g_max) - shift) * inv * (1.0 + r_bg) * (1.0 + r_bg),
                     0.0)
    # Pass 2, objects backwards with the running suffix product.
    suffix = tl.full([BLOCK], 1.0, tl.float32)
    for i in range(O):
        o = O - 1 - i
        x = tl.load(prob_base + o * S, mask=inside, other=0.0).to(tl.float32)
        g = tl.load(grad_out_base + (o + 1) * S, mask=inside, other=0.0).to(tl.float32)
        prefix = tl.load(prefix_base + o * S, mask=inside, other=0.0)
        r = _ratio(x, eps)
        gq = tl.where((x >= eps) & (x <= 1.0 - eps), ((g - g_max) - shift) * inv * (1.0 + r) * (1.0 + r), 0.0)
        tl.store(grad_prob_base + o * S, (gq - gq_bg * prefix * suffix).to(grad_prob_ptr.dtype.element_ty),
                 mask=inside)
        suffix *= 1.0 - x


def soft_aggregate_forward_triton(prob: torch.Tensor, eps: float) -> torch.Tensor:
    """prob (B, O, S) -> (B, O + 1, S)."""
    prob = prob.contiguous()
    B, O, S = prob.shape
    out = torch.empty((B, O + 1, S), device=prob.device, dtype=prob.dtype)
    if out.numel():
        cfg = configs.choose("_soft_aggregate_fwd_kernel", configs.aggregate(configs.target_for(prob.device)))
        _soft_aggregate_fwd_kernel[(triton.cdiv(S, cfg["BLOCK"]), B)](prob, out, O, S, eps, **cfg.launch_kwargs())
    return out


def soft_aggregate_backward_triton(grad_out: torch.Tensor, prob: torch.Tensor, eps: float) -> torch.Tensor:
    """grad_out (B, O + 1, S), prob (B, O, S) -> grad_prob (B, O, S)."""
    prob, grad_out = prob.contiguous(), grad_out.contiguous()
    B, O, S = prob.shape
    grad_prob = torch.empty_like(prob)
    prefix = torch.empty((B, O, S), device=prob.device, dtype=torch.float32)
    if grad_prob.numel():
        cfg = configs.choose("_soft_aggregate_bwd_kernel", configs.aggregate(configs.target_for(prob.device)))
        _soft_aggregate_bwd_kernel[(triton.cdiv(S, cfg["BLOCK"]), B)](grad_out, prob, grad_prob, prefix, O, S, eps,
                                                               **cfg.launch_kwargs())
    return grad_prob
