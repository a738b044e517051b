"""Triton kernels of the TTVOS template update (math: csrc/template_update.cpp).

Forward: one kernel. Program (b, row block, column block, P split) multiplies a BLOCK_N x
BLOCK_P tile of key by a BLOCK_P x BLOCK_C tile of value^T over its share of the P positions
(tl.dot, float32 accumulation; float32 inputs in TF32 or IEEE as torch's float32 matmul precision says;
tiles and warps from configs.template_update_forward). When one program holds whole rows over all of P (one column
block, no split: the usual Ct <= 128 case with enough batch items to fill the GPU), it finishes
them in registers: scale, row softmax, blend, store. Otherwise (few items: the P reduction is
split so that about two programs run per SM; or Ct > 128) each program adds its partial tile
into a float32 scratch with atomics and bumps a per-row-block counter; the program that arrives
last finishes the row block, reading the scratch back from L2 (it was just written there) in
two sweeps over the columns (online max/sum, then normalise and blend). Either way the scores
never travel between kernels.

Backward: one elementwise kernel over row blocks (softmax backward, template gradient, per-row
weight-gradient partials summed in a fixed order afterwards), then the two GEMMs
grad_key = grad_scores @ value and grad_value = grad_scores^T @ key with torch.bmm (cuBLAS).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import configs
from ._common import dot
from .support import TEMPLATE_UPDATE_DTYPES

SUPPORTED_DTYPES = TEMPLATE_UPDATE_DTYPES
MAX_BLOCK_C = configs.TEMPLATE_MAX_BLOCK_C


@triton.jit
def _finish_tile(incoming, b, rows, cols, row_ok, col_ok, Nt, Ct, template_ptr, weight_ptr, out_ptr, incoming_ptr,
                 HAS_TEMPLATE: tl.constexpr):
    """Store I (and the blend) for a [BLOCK_N, BLOCK_C] tile of outputs (contiguous (B, Nt, Ct))."""
    offs = (b * Nt + rows)[:, None] * Ct + cols[None, :]
    mask = row_ok[:, None] & col_ok[None, :]
    if HAS_TEMPLATE:
        w = tl.load(weight_ptr + b).to(tl.float32)
        c = 1.0 / (1.0 + w)
        t = tl.load(template_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(incoming_ptr + offs, incoming.to(incoming_ptr.dtype.element_ty), mask=mask)
        tl.store(out_ptr + offs, (t * c + incoming * (w * c)).to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(out_ptr + offs, incoming.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _template_update_fwd_kernel(key_ptr, value_ptr, template_ptr, weight_ptr, out_ptr, incoming_ptr, scratch_ptr,
                                counter_ptr, Nt, Ct, P, scale, stride_kb, stride_kn, stride_kp, stride_vb, stride_vc,
                                stride_vp, p_blocks_per_split, num_col_blocks,
                                HAS_TEMPLATE: tl.constexpr, DIRECT: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                                BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    pid_rows = tl.program_id(0)
    row_blocks = tl.cdiv(Nt, BLOCK_N)
    b = (pid_rows // row_blocks).to(tl.int64)
    rows = (pid_rows % row_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok, col_ok = rows < Nt, cols < Ct
    offs_p = tl.arange(0, BLOCK_P)
    p0 = tl.program_id(2) * p_blocks_per_split * BLOCK_P
    k_ptrs = key_ptr + b * stride_kb + rows.to(tl.int64)[:, None] * stride_kn + (p0 + offs_p)[None, :] * stride_kp
    v_ptrs = value_ptr + b * stride_vb + cols.to(tl.int64)[None, :] * stride_vc + (p0 + offs_p)[:, None] * stride_vp
    acc = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
    for i in range(0, p_blocks_per_split):
        p_ok = p0 + i * BLOCK_P + offs_p < P
        k = tl.load(k_ptrs, mask=row_ok[:, None] & p_ok[None, :], other=0.0)
        v = tl.load(v_ptrs, mask=p_ok[:, None] & col_ok[None, :], other=0.0)
        acc += dot(k, v, PRECISION, UPCAST)
        k_ptrs += BLOCK_P * stride_kp
        v_ptrs += BLOCK_P * stride_vp
    if DIRECT:
        # Whole rows over all of P: softmax in registers (scale > 0, padded columns at -inf).
        s = tl.where(col_ok[None, :], acc * scale, float("-inf"))
        e = tl.exp(s - tl.max(s, axis=1)[:, None])
        _finish_tile(e / tl.sum(e, axis=1)[:, None], b, rows, cols, row_ok, col_ok, Nt, Ct, template_ptr, weight_ptr,
                     out_ptr, incoming_ptr, HAS_TEMPLATE)
    else:
        s_ptrs = scratch_ptr + (b * Nt + rows)[:, None] * Ct + cols[None, :]
        tl.atomic_add(s_ptrs, acc, mask=row_ok[:, None] & col_ok[None, :])
        tl.debug_barrier()  # every thread's share is added before the arrival is counted
        arrived = tl.atomic_add(counter_ptr + pid_rows, 1)
        if arrived == tl.num_programs(1) * tl.num_programs(2) - 1:
            # Last program of this row block: all partial sums are in the scratch.
            row_base = scratch_ptr + (b * Nt + rows)[:, None] * Ct
            m = tl.full([BLOCK_N], float("-inf"), tl.float32)
            total = tl.zeros([BLOCK_N], tl.float32)
            for cb in range(0, num_col_blocks):
                c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
                c_ok = c < Ct
                s = tl.load(row_base + c[None, :], mask=row_ok[:, None] & c_ok[None, :], other=0.0, volatile=True)
                s = tl.where(c_ok[None, :], s * scale, float("-inf"))
                m_new = tl.maximum(m, tl.max(s, axis=1))
                total = total * tl.exp(m - m_new) + tl.sum(tl.exp(s - m_new[:, None]), axis=1)
                m = m_new
            for cb in range(0, num_col_blocks):
                c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
                c_ok = c < Ct
                s = tl.load(row_base + c[None, :], mask=row_ok[:, None] & c_ok[None, :], other=0.0, volatile=True)
                incoming = tl.exp(s * scale - m[:, None]) / total[:, None]
                _finish_tile(incoming, b, rows, c, row_ok, c_ok, Nt, Ct, template_ptr, weight_ptr, out_ptr,
                             incoming_ptr, HAS_TEMPLATE)


@triton.jit
def _grad_and_incoming(grad_ptr, incoming_ptr, row_base, row_ok, cb, Ct, BLOCK_C: tl.constexpr):
    """Column block cb of the output gradient and of the softmax weights (float32), with the
    offsets and the mask of the tile."""
    cols = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = row_ok[:, None] & (cols < Ct)[None, :]
    offs = row_base + cols[None, :]
    g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    i = tl.load(incoming_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return g, i, offs, mask


@triton.jit
def _template_update_bwd_scores_kernel(grad_ptr, incoming_ptr, template_ptr, weight_ptr, grad_scores_ptr,
                                       grad_template_ptr, weight_partial_ptr, Nt, Ct, scale, num_col_blocks,
                                       HAS_TEMPLATE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    row_blocks = tl.cdiv(Nt, BLOCK_N)
    b = (pid // row_blocks).to(tl.int64)
    rows = (pid % row_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < Nt
    row_base = (b * Nt + rows)[:, None] * Ct
    if HAS_TEMPLATE:
        w = tl.load(weight_ptr + b).to(tl.float32)
        c = 1.0 / (1.0 + w)
        a = w * c
    else:
        c = 1.0
        a = 1.0
    dot = tl.zeros([BLOCK_N], tl.float32)
    partial = tl.zeros([BLOCK_N], tl.float32)
    for cb in range(0, num_col_blocks):
        g, i, offs, mask = _grad_and_incoming(grad_ptr, incoming_ptr, row_base, row_ok, cb, Ct, BLOCK_C)
        dot += tl.sum(g * i, axis=1)
        if HAS_TEMPLATE:
            t = tl.load(template_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            partial += tl.sum(g * (i - t), axis=1)
            tl.store(grad_template_ptr + offs, (g * c).to(grad_template_ptr.dtype.element_ty), mask=mask)
    for cb in range(0, num_col_blocks):  # second pass: needs the finished row dots
        g, i, offs, mask = _grad_and_incoming(grad_ptr, incoming_ptr, row_base, row_ok, cb, Ct, BLOCK_C)
        tl.store(grad_scores_ptr + offs, (a * scale) * i * (g - dot[:, None]), mask=mask)
    if HAS_TEMPLATE:
        tl.store(weight_partial_ptr + b * Nt + rows, partial * c * c, mask=row_ok)


def _check_dtype(t: torch.Tensor) -> None:
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"template_update: the triton backend supports "
                        f"{tuple(str(d).replace('torch.', '') for d in SUPPORTED_DTYPES)}, got {t.dtype} "
                        "(use backend='cpu', 'cuda' or 'reference' for float64)")


def _pow2(n: int, low: int, high: int) -> int:
    return max(low, min(high, triton.next_power_of_2(max(n, 1))))


def template_update_forward_triton(key: torch.Tensor, value: torch.Tensor, template: torch.Tensor | None,
                                   weight: torch.Tensor | None, scale: float, *,
                                   split: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """key (B, Nt, P), value (B, Ct, P) (any strides) -> (out (B, Nt, Ct), incoming (B, Nt, Ct) or (0,)).

    split: how many programs share one P reduction (default: enough to fill the GPU).
    """
    _check_dtype(key)
    B, Nt, P = key.shape
    Ct = value.shape[1]
    has_template = template is not None
    out = torch.empty((B, Nt, Ct), device=key.device, dtype=key.dtype)
    incoming = torch.empty_like(out) if has_template else key.new_empty((0,))
    if out.numel() == 0:
        return out, incoming
    template_c = template.contiguous() if has_template else out
    weight_c = weight.contiguous() if has_template else out
    target = configs.target_for(key.device)
    precision = configs.dot_precision(key.dtype)
    cfg = configs.choose("_template_update_fwd_kernel", configs.template_update_forward(
        target, key.dtype, precision, _pow2(Nt, 16, 64), _pow2(Ct, 16, MAX_BLOCK_C)))
    block_n, block_c, block_p = cfg["BLOCK_N"], cfg["BLOCK_C"], cfg["BLOCK_P"]
    row_blocks, col_blocks = triton.cdiv(Nt, block_n), triton.cdiv(Ct, block_c)
    p_blocks = triton.cdiv(P, block_p)
    tiles = B * row_blocks * col_blocks
    if split is None:
        # About two programs per SM on a GPU; one under the interpreter (it runs programs in turn).
        split = max(1, (1 if target.interpreter else 2 * target.num_sms) // tiles)
    per_split = triton.cdiv(p_blocks, max(1, min(split, p_blocks)))
    split = triton.cdiv(p_blocks, per_split)
    direct = split == 1 and col_blocks == 1
    if direct:
        scratch, counters = out, out  # unused
    else:
        scratch = torch.zeros((B, Nt, Ct), device=key.device, dtype=torch.float32)
        counters = torch.zeros((B * row_blocks,), device=key.device, dtype=torch.int32)
    _template_update_fwd_kernel[(B * row_blocks, col_blocks, split)](
        key, value, template_c, weight_c, out, incoming, scratch, counters, Nt, Ct, P, scale,
        key.stride(0), key.stride(1), key.stride(2), value.stride(0), value.stride(1), value.stride(2),
        per_split, col_blocks, HAS_TEMPLATE=has_template, DIRECT=direct,
        PRECISION=precision, UPCAST=configs.upcast_dots(key.dtype, target), **cfg.launch_kwargs())
    return out, incoming


def template_update_backward_triton(grad_out: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                    incoming: torch.Tensor, template: torch.Tensor | None,
                                    weight: torch.Tensor | None, scale: float, need_key: bool,
                                    need_value: bool) -> tuple[torch.Tensor, ...]:
    """Gradients (key, value, template, weight); empty (0,) tensors for those not needed or absent."""
    _check_dtype(key)
    B, Nt, Ct = incoming.shape
    has_template = template is not None
    grad_out, incoming = grad_out.contiguous(), incoming.contiguous()
    grad_scores = torch.empty((B, Nt, Ct), device=key.device, dtype=torch.float32)
    grad_template = torch.empty_like(incoming) if has_template else key.new_empty((0,))
    partial = torch.empty((B, Nt), device=key.device, dtype=torch.float32)
    if grad_scores.numel():
        block_c = _pow2(Ct, 16, MAX_BLOCK_C)
        cfg = configs.choose("_template_update_bwd_scores_kernel", configs.template_update_backward_scores(
            configs.target_for(key.device), _pow2(Nt, 1, max(1, 4096 // block_c)), block_c))
        row_blocks = triton.cdiv(Nt, cfg["BLOCK_N"])
        _template_update_bwd_scores_kernel[(B * row_blocks,)](
            grad_out, incoming, template.contiguous() if has_template else incoming,
            weight.contiguous() if has_template else incoming, grad_scores, grad_template, partial, Nt, Ct, scale,
            triton.cdiv(Ct, cfg["BLOCK_C"]), HAS_TEMPLATE=has_template, **cfg.launch_kwargs())
    else:
        partial.zero_()
    grad_weight = partial.sum(1).to(key.dtype) if has_template else key.new_empty((0,))
    # The GEMMs in the input dtype (float32 accumulation in cuBLAS), as eager autograd does.
    ds = grad_scores.to(key.dtype)
    grad_key = torch.bmm(ds, value) if need_key else key.new_empty((0,))
    grad_value = torch.bmm(ds.transpose(1, 2), key) if need_value else key.new_empty((0,))
    return grad_key, grad_value, grad_template, grad_weight
