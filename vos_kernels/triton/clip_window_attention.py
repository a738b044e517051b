"""Triton kernels of clip window attention (math: csrc/cpu/clip_window_attention_kernel.cpp).

A window is indexed by its full-window positions r = (lt * wh + lh) * ww + lw, r < NF = wt*wh*ww,
padded to BLOCK_N (a power of two); position r is a real token when its clip coordinate
(k * w - front + l on each axis) lies inside the clip, so border windows are partial without
any padded copy: tokens are loaded in place through the inputs' strides. The bias index of
Video Swin is code(i) - code(j) + center with code = (lt (2wh-1) + lh)(2ww-1) + lw.

forward:  one program per (window, head, block of BLOCK_M query positions); all keys of the
          window at once: S = Q K^T * scale + bias, exact row softmax, O = P V.
backward: one program per (window, head); K, V stay on chip, the query blocks are looped over,
          dK and dV accumulate in registers, dQ is stored per block; dS is added atomically to a
          dense (heads, NF, NF) float32 buffer that the launcher folds into the (T, heads) table
          (so the bias gradient's summation order, unlike dQ/dK/dV, is not deterministic).
Everything accumulates in float32; float32 inputs use IEEE (not TF32) products.
A whole window is held on chip: NF <= 256 and d <= 128 (checked with a clear error).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..reference.clip_window_attention import relative_position_index

MAX_WINDOW_TOKENS = 256
MAX_HEAD_DIM = 128


@triton.jit
def _tokens(win, r, L, H, W, NWT, NWH, NWW, FT, FH, FW, WT: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr):
    """Clip coordinates (b, t, h, w), validity and bias code of full-window positions r of window `win`."""
    kw = win % NWW
    rest = win // NWW
    kh = rest % NWH
    rest = rest // NWH
    kt = rest % NWT
    b = (rest // NWT).to(tl.int64)
    lt = r // (WH * WW)
    lh = (r // WW) % WH
    lw = r % WW
    t = kt * WT - FT + lt
    h = kh * WH - FH + lh
    w = kw * WW - FW + lw
    valid = (r < WT * WH * WW) & (t >= 0) & (t < L) & (h >= 0) & (h < H) & (w >= 0) & (w < W)
    code = (lt * (2 * WH - 1) + lh) * (2 * WW - 1) + lw
    return b, t.to(tl.int64), h.to(tl.int64), w.to(tl.int64), valid, code


@triton.jit
def _load_rows(ptr, sb, st, sh, sw, sc, b, t, h, w, c0, rd, valid, dmask):
    offs = b * sb + t * st + h * sh + w * sw
    return tl.load(ptr + offs[:, None] + (c0 + rd)[None, :] * sc, mask=valid[:, None] & dmask[None, :], other=0.0)


@triton.jit
def _probabilities(q, k, bias_ptr, head, heads, code_m, code_n, valid_m, valid_n, scale,
                   WT: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, HAS_BIAS: tl.constexpr,
                   DOT_PRECISION: tl.constexpr):
    """P = softmax over the window's keys of Q K^T * scale + bias: (BLOCK_M, BLOCK_N) float32."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale
    if HAS_BIAS:
        center = ((WT - 1) * (2 * WH - 1) + (WH - 1)) * (2 * WW - 1) + (WW - 1)
        index = code_m[:, None] - code_n[None, :] + center
        s += tl.load(bias_ptr + index * heads + head, mask=valid_m[:, None] & valid_n[None, :], other=0.0)
    s = tl.where(valid_n[None, :], s, float("-inf"))
    p = tl.exp(s - tl.max(s, axis=1)[:, None])
    return p / tl.sum(p, axis=1)[:, None]


@triton.jit
def _cwa_fwd_kernel(q_ptr, k_ptr, v_ptr, bias_ptr, out_ptr,
                    sqb, sqt, sqh, sqw, sqc, skb, skt, skh, skw, skc, svb, svt, svh, svw, svc,
                    sob, sot, soh, sow, soc,
                    L, H, W, NWT, NWH, NWW, FT, FH, FW, heads, d, scale,
                    WT: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, HAS_BIAS: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                    DOT_PRECISION: tl.constexpr):
    win = tl.program_id(0)
    head = tl.program_id(1)
    rm = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.arange(0, BLOCK_N)
    rd = tl.arange(0, BLOCK_D)
    dmask = rd < d
    c0 = head * d
    bm, tm, hm, wm, valid_m, code_m = _tokens(win, rm, L, H, W, NWT, NWH, NWW, FT, FH, FW, WT, WH, WW)
    bn, tn, hn, wn, valid_n, code_n = _tokens(win, rn, L, H, W, NWT, NWH, NWW, FT, FH, FW, WT, WH, WW)
    q = _load_rows(q_ptr, sqb, sqt, sqh, sqw, sqc, bm, tm, hm, wm, c0, rd, valid_m, dmask)
    k = _load_rows(k_ptr, skb, skt, skh, skw, skc, bn, tn, hn, wn, c0, rd, valid_n, dmask)
    v = _load_rows(v_ptr, svb, svt, svh, svw, svc, bn, tn, hn, wn, c0, rd, valid_n, dmask)
    p = _probabilities(q, k, bias_ptr, head, heads, code_m, code_n, valid_m, valid_n, scale,
                       WT, WH, WW, HAS_BIAS, DOT_PRECISION)
    o = tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    offs = bm * sob + tm * sot + hm * soh + wm * sow
    tl.store(out_ptr + offs[:, None] + (c0 + rd)[None, :] * soc, o.to(out_ptr.dtype.element_ty),
             mask=valid_m[:, None] & dmask[None, :])


@triton.jit
def _cwa_bwd_kernel(q_ptr, k_ptr, v_ptr, g_ptr, bias_ptr, dq_ptr, dk_ptr, dv_ptr, dbias_ptr,
                    sqb, sqt, sqh, sqw, sqc, skb, skt, skh, skw, skc, svb, svt, svh, svw, svc,
                    sgb, sgt, sgh, sgw, sgc, sob, sot, soh, sow, soc,
                    L, H, W, NWT, NWH, NWW, FT, FH, FW, heads, d, scale,
                    WT: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, HAS_BIAS: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                    DOT_PRECISION: tl.constexpr):
    NF: tl.constexpr = WT * WH * WW
    win = tl.program_id(0)
    head = tl.program_id(1)
    rn = tl.arange(0, BLOCK_N)
    rd = tl.arange(0, BLOCK_D)
    dmask = rd < d
    c0 = head * d
    bn, tn, hn, wn, valid_n, code_n = _tokens(win, rn, L, H, W, NWT, NWH, NWW, FT, FH, FW, WT, WH, WW)
    k = _load_rows(k_ptr, skb, skt, skh, skw, skc, bn, tn, hn, wn, c0, rd, valid_n, dmask)
    v = _load_rows(v_ptr, svb, svt, svh, svw, svc, bn, tn, hn, wn, c0, rd, valid_n, dmask)
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for m0 in range(0, NF, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M)
        bm, tm, hm, wm, valid_m, code_m = _tokens(win, rm, L, H, W, NWT, NWH, NWW, FT, FH, FW, WT, WH, WW)
        q = _load_rows(q_ptr, sqb, sqt, sqh, sqw, sqc, bm, tm, hm, wm, c0, rd, valid_m, dmask)
        do = _load_rows(g_ptr, sgb, sgt, sgh, sgw, sgc, bm, tm, hm, wm, c0, rd, valid_m, dmask)
        p = _probabilities(q, k, bias_ptr, head, heads, code_m, code_n, valid_m, valid_n, scale,
                           WT, WH, WW, HAS_BIAS, DOT_PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - tl.sum(p * dp, axis=1)[:, None])          # rows of invalid queries are 0 (do = 0)
        dq = tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION) * scale
        offs = bm * sob + tm * sot + hm * soh + wm * sow
        tl.store(dq_ptr + offs[:, None] + (c0 + rd)[None, :] * soc, dq.to(dq_ptr.dtype.element_ty),
                 mask=valid_m[:, None] & dmask[None, :])
        dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=DOT_PRECISION)
        dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=DOT_PRECISION)
        if HAS_BIAS:
            tl.atomic_add(dbias_ptr + (head * NF + rm[:, None]) * NF + rn[None, :], ds,
                          mask=valid_m[:, None] & valid_n[None, :])
    offs = bn * sob + tn * sot + hn * soh + wn * sow
    tl.store(dk_ptr + offs[:, None] + (c0 + rd)[None, :] * soc, (dk * scale).to(dk_ptr.dtype.element_ty),
             mask=valid_n[:, None] & dmask[None, :])
    tl.store(dv_ptr + offs[:, None] + (c0 + rd)[None, :] * soc, dv.to(dv_ptr.dtype.element_ty),
             mask=valid_n[:, None] & dmask[None, :])


def _geometry(shape, window, shift):
    """(per-axis window counts, per-axis fronts, total windows over the batch)."""
    B, L, H, W, _ = shape
    fronts = [(w - s) % w for w, s in zip(window, shift)]
    counts = [-(-(size + f) // w) for size, f, w in zip((L, H, W), fronts, window)]
    return counts, fronts, B * counts[0] * counts[1] * counts[2]


def _launch_config(query: torch.Tensor, num_heads: int, window) -> tuple[int, int, str]:
    nf = window[0] * window[1] * window[2]
    d = query.shape[-1] // num_heads
    if nf > MAX_WINDOW_TOKENS or d > MAX_HEAD_DIM:
        raise NotImplementedError(
            f"clip_window_attention: the triton backend keeps a whole window on chip and serves windows of at most "
            f"{MAX_WINDOW_TOKENS} tokens and head dims of at most {MAX_HEAD_DIM}, got window {tuple(window)} "
            f"({nf} tokens) and d = {d}; use backend 'cuda' or 'cpu'")
    precision = "ieee" if query.dtype == torch.float32 else "tf32"
    return max(16, triton.next_power_of_2(nf)), max(16, triton.next_power_of_2(d)), precision


def _bias_table(rel_pos_bias):
    return None if rel_pos_bias is None else rel_pos_bias.detach().to(torch.float32).contiguous()


def clip_window_attention_forward_triton(query, key, value, rel_pos_bias, num_heads, window, shift, scale):
    """query, key, value (B, L, H, W, C) (any strides) -> out (B, L, H, W, C) contiguous."""
    block_n, block_d, precision = _launch_config(query, num_heads, window)
    B, L, H, W, C = query.shape
    out = torch.empty((B, L, H, W, C), device=query.device, dtype=query.dtype)
    counts, fronts, windows = _geometry(query.shape, window, shift)
    if out.numel() == 0:
        return out
    bias = _bias_table(rel_pos_bias)
    block_m = min(64, block_n)
    grid = (windows, num_heads, triton.cdiv(window[0] * window[1] * window[2], block_m))
    _cwa_fwd_kernel[grid](query, key, value, bias if bias is not None else out, out,
                          *query.stride(), *key.stride(), *value.stride(), *out.stride(),
                          L, H, W, *counts, *fronts, num_heads, C // num_heads, scale,
                          WT=window[0], WH=window[1], WW=window[2], HAS_BIAS=bias is not None,
                          BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, DOT_PRECISION=precision,
                          num_warps=4)
    return out


def clip_window_attention_backward_triton(grad_out, query, key, value, rel_pos_bias, num_heads, window, shift, scale):
    """-> (grad_query, grad_key, grad_value (B, L, H, W, C) contiguous, grad_rel_pos_bias (T, heads) or (0,))."""
    block_n, block_d, precision = _launch_config(query, num_heads, window)
    B, L, H, W, C = query.shape
    grads = [torch.empty((B, L, H, W, C), device=query.device, dtype=query.dtype) for _ in range(3)]
    counts, fronts, windows = _geometry(query.shape, window, shift)
    nf = window[0] * window[1] * window[2]
    bias = _bias_table(rel_pos_bias)
    dense = torch.zeros((num_heads, nf, nf) if bias is not None else (1,), device=query.device, dtype=torch.float32)
    if grads[0].numel():
        _cwa_bwd_kernel[(windows, num_heads)](query, key, value, grad_out, bias if bias is not None else dense,
                                             *grads, dense,
                                             *query.stride(), *key.stride(), *value.stride(), *grad_out.stride(),
                                             *grads[0].stride(),
                                             L, H, W, *counts, *fronts, num_heads, C // num_heads, scale,
                                             WT=window[0], WH=window[1], WW=window[2], HAS_BIAS=bias is not None,
                                             BLOCK_M=min(32, block_n), BLOCK_N=block_n, BLOCK_D=block_d,
                                             DOT_PRECISION=precision, num_warps=8)
    if bias is None:
        return (*grads, query.new_empty((0,)))
    index = relative_position_index(tuple(window)).to(query.device).view(-1)
    table = torch.zeros(bias.shape, device=query.device, dtype=torch.float32)
    table.index_add_(0, index, dense.view(num_heads, nf * nf).t())
    return (*grads, table.to(rel_pos_bias.dtype))
