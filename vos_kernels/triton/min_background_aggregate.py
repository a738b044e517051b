"""Triton kernels of min-background aggregation (math: csrc/cpu/min_background_aggregate_kernel.cpp).

One program handles BLOCK pixels of one batch item and loops over the O objects (q is
(B, O, 2, S): object k's "not object" plane at 2k, its "object" plane at 2k + 1); the odds are
recomputed in each loop rather than kept, so any O works. Everything is computed in float32.
"""
import torch
import triton
import triton.language as tl

from . import configs


@triton.jit
def _clamp(x, eps):
    # by comparisons, which keep a NaN (tl.minimum/maximum would drop it): NaN in, NaN out
    return tl.where(x < eps, eps, tl.where(x > 1.0 - eps, 1.0 - eps, x))


@triton.jit
def _inside(x, eps):
    return ((x >= eps) & (x <= 1.0 - eps)).to(tl.float32)


@triton.jit
def _min_background_aggregate_fwd_kernel(q_ptr, out_ptr, O, S, eps, BLOCK: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < S
    q_base = q_ptr + b * O * 2 * S + offs
    out_base = out_ptr + b * (O + 1) * S + offs
    minimum = tl.load(q_base, mask=inside, other=0.5).to(tl.float32)
    for k in range(1, O):
        a = tl.load(q_base + 2 * k * S, mask=inside, other=0.5).to(tl.float32)
        minimum = tl.where(a < minimum, a, minimum)
    odds_bg = _clamp(minimum, eps) / _clamp(1.0 - minimum, eps)
    total = odds_bg
    for k in range(O):
        a = tl.load(q_base + 2 * k * S, mask=inside, other=0.5).to(tl.float32)
        f = tl.load(q_base + (2 * k + 1) * S, mask=inside, other=0.5).to(tl.float32)
        total += _clamp(f, eps) / _clamp(a, eps)
    inv = 1.0 / total
    tl.store(out_base, (odds_bg * inv).to(out_ptr.dtype.element_ty), mask=inside)
    for k in range(O):
        a = tl.load(q_base + 2 * k * S, mask=inside, other=0.5).to(tl.float32)
        f = tl.load(q_base + (2 * k + 1) * S, mask=inside, other=0.5).to(tl.float32)
        tl.store(out_base + (k + 1) * S, (_clamp(f, eps) / _clamp(a, eps) * inv).to(out_ptr.dtype.element_ty),
                 mask=inside)


@triton.jit
def _min_background_aggregate_bwd_kernel(grad_out_ptr, q_ptr, grad_q_ptr, O, S, eps, BLOCK: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < S
    q_base = q_ptr + b * O * 2 * S + offs
    grad_q_base = grad_q_ptr + b * O * 2 * S + offs
    grad_out_base = grad_out_ptr + b * (O + 1) * S + offs
    # The minimum and its first index (torch.min's choice on ties).
    minimum = tl.load(q_base, mask=inside, other=0.5).to(tl.float32)
    argmin = tl.zeros([BLOCK], tl.int32)
    for k in range(1, O):
        a = tl.load(q_base + 2 * k * S, mask=inside, other=0.5).to(tl.float32)
        smaller = a < minimum
        minimum = tl.where(smaller, a, minimum)
        argmin = tl.where(smaller, k, argmin)
    one_minus = 1.0 - minimum
    c_one_minus = _clamp(one_minus, eps)
    odds_bg = _clamp(minimum, eps) / c_one_minus
    g_bg = tl.load(grad_out_base, mask=inside, other=0.0).to(tl.float32)
    # g_j - dot as (g_j - g_d) - D around the dominant channel d (see the CPU kernel).
    total = odds_bg
    odds_max = odds_bg
    g_max = g_bg
    for k in range(O):
        a = tl.load(q_base + 2 * k * S, mask=inside, other=0.5).to(tl.float32)
        f = tl.load(q_base + (2 * k + 1) * S, mask=inside, other=0.5).to(tl.float32)
        g = tl.load(grad_out_base + (k + 1) * S, mask=inside, other=0.0).to(tl.float32)
        odds = _clamp(f, eps) / _clamp(a, eps)
        total += odds
        g_max = tl.where(odds > odds_max, g, g_max)
        odds_max = tl.maximum(odds, odds_max)
    inv = 1.0 / total
    shift = odds_bg * (g_bg - g_max)
    for k in range(O):
        a = tl.load(q_base + 2 * k * S, mask=inside, other=0.5).to(tl.float32)
        f = tl.load(q_base + (2 * k + 1) * S, mask=inside, other=0.5).to(tl.float32)
        g = tl.load(grad_out_base + (k + 1) * S, mask=inside, other=0.0).to(tl.float32)
        shift += _clamp(f, eps) / _clamp(a, eps) * (g - g_max)
    shift *= inv
    t_bg = ((g_bg - g_max) - shift) * inv
    grad_min = t_bg * (_inside(minimum, eps) + _inside(one_minus, eps) * odds_bg) / c_one_minus
    for k in range(O):
        a = tl.load(q_base + 2 * k * S, mask=inside, other=0.5).to(tl.float32)
        f = tl.load(q_base + (2 * k + 1) * S, mask=inside, other=0.5).to(tl.float32)
        g = tl.load(grad_out_base + (k + 1) * S, mask=inside, other=0.0).to(tl.float32)
        c_a = _clamp(a, eps)
        t_over_ca = ((g - g_max) - shift) * inv / c_a
        grad_a = tl.where(argmin == k, grad_min, 0.0) - _inside(a, eps) * t_over_ca * (_clamp(f, eps) / c_a)
        grad_f = _inside(f, eps) * t_over_ca
        tl.store(grad_q_base + 2 * k * S, grad_a.to(grad_q_ptr.dtype.element_ty), mask=inside)
        tl.store(grad_q_base + (2 * k + 1) * S, grad_f.to(grad_q_ptr.dtype.element_ty), mask=inside)


def min_background_aggregate_forward_triton(q: torch.Tensor, eps: float) -> torch.Tensor:
    """q (B, O, 2, S) -> (B, O + 1, S)."""
    q = q.contiguous()
    B, O, _, S = q.shape
    out = torch.empty((B, O + 1, S), device=q.device, dtype=q.dtype)
    if out.numel():
        cfg = configs.choose("_min_background_aggregate_fwd_kernel", configs.aggregate(configs.target_for(q.device)))
        _min_background_aggregate_fwd_kernel[(triton.cdiv(S, cfg["BLOCK"]), B)](q, out, O, S, eps, **cfg.launch_kwargs())
    return out


def min_background_aggregate_backward_triton(grad_out: torch.Tensor, q: torch.Tensor, eps: float) -> torch.Tensor:
    """grad_out (B, O + 1, S), q (B, O, 2, S) -> grad_q (B, O, 2, S)."""
    q, grad_out = q.contiguous(), grad_out.contiguous()
    B, O, _, S = q.shape
    grad_q = torch.empty_like(q)
    if grad_q.numel():
        cfg = configs.choose("_min_background_aggregate_bwd_kernel", configs.aggregate(configs.target_for(q.device)))
        _min_background_aggregate_bwd_kernel[(triton.cdiv(S, cfg["BLOCK"]), B)](grad_out, q, grad_q, O, S, eps,
                                                                         **cfg.launch_kwargs())
    return grad_q
