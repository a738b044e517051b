"""Triton kernels of clip window attention (math: csrc/cpu/clip_window_attention_kernel.cpp).

A window is indexed by its full-window positions r = (lt * wh + lh) * ww + lw, r < NF = wt*wh*ww,
padded to BLOCK_N (a power of two); position r is a real token when its clip coordinate
(k * w - front + l on each axis) lies inside the clip, so border windows are partial without
any padded copy: tokens are loaded in place through the inputs' strides. The bias index of
Video Swin is code(i) - code(j) + center with code = (lt (2wh-1) + lh)(2ww-1) + lw.

The head dim d is processed in chunks of BLOCK_D channels (d <= BLOCK_D: one chunk), so any
head dim fits in registers (PCVOS's single-head ICR has d = 512): S = sum_chunks Q_c K_c^T.

forward:  one program per (window, head, block of BLOCK_M query positions); all keys of the
          window at once: S = Q K^T * scale + bias, exact row softmax, then O_c = P V_c per chunk.
backward: one program per (window, head, head-dim chunk c); the query blocks are looped over,
          recomputing S and dP = dO V^T over the whole head dim, and dQ_c = dS K_c is stored
          per block while dK_c, dV_c accumulate in registers. The chunk-0 program adds dS
          atomically to a dense (heads, NF, NF) float32 buffer that the launcher folds into the
          (T, heads) table (so the bias gradient's summation order, unlike dQ/dK/dV, is not
          deterministic).
Everything accumulates in float32. Float32 dots follow torch's float32 matmul precision
(configs.dot_precision); bfloat16/float16 dots take P and dS rounded to the input dtype.
A window's keys are held on chip: NF <= 256 (checked with a clear error). Tiles: configs.window_attention_*.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..reference.clip_window_attention import relative_position_index
from . import configs
from ._common import dot

MAX_WINDOW_TOKENS = configs.WINDOW_MAX_TOKENS


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
def _rows(sb, st, sh, sw, b, t, h, w):
    """Element offsets of the tokens' channel 0."""
    return b * sb + t * st + h * sh + w * sw


@triton.jit
def _load_chunk(ptr, rows, sc, channels, valid, in_head):
    return tl.load(ptr + rows[:, None] + channels[None, :] * sc, mask=valid[:, None] & in_head[None, :], other=0.0)


@triton.jit
def _products(a_ptr, a_rows, sac, b_ptr, b_rows, sbc, valid_a, valid_b, c_head, d,
              BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
              PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """A B^T over the head's d channels (c_head + [0, d)), chunk by chunk: (BLOCK_A, BLOCK_B) float32."""
    acc = tl.zeros((BLOCK_A, BLOCK_B), tl.float32)
    rd = tl.arange(0, BLOCK_D)
    for c0 in range(0, d, BLOCK_D):
        in_head = c0 + rd < d
        a = _load_chunk(a_ptr, a_rows, sac, c_head + c0 + rd, valid_a, in_head)
        b = _load_chunk(b_ptr, b_rows, sbc, c_head + c0 + rd, valid_b, in_head)
        acc += dot(a, tl.trans(b), PRECISION, UPCAST)
    return acc


@triton.jit
def _softmax(s, bias_ptr, head, heads, code_m, code_n, valid_m, valid_n,
             WT: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, HAS_BIAS: tl.constexpr):
    """P = softmax over the window's keys of s + bias: (BLOCK_M, BLOCK_N) float32."""
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
                    PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    win = tl.program_id(0)
    head = tl.program_id(1)
    rm = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.arange(0, BLOCK_N)
    rd = tl.arange(0, BLOCK_D)
    c_head = head * d
    bm, tm, hm, wm, valid_m, code_m = _tokens(win, rm, L, H, W, NWT, NWH, NWW, FT, FH, FW, WT, WH, WW)
    bn, tn, hn, wn, valid_n, code_n = _tokens(win, rn, L, H, W, NWT, NWH, NWW, FT, FH, FW, WT, WH, WW)
    q_rows = _rows(sqb, sqt, sqh, sqw, bm, tm, hm, wm)
    k_rows = _rows(skb, skt, skh, skw, bn, tn, hn, wn)
    v_rows = _rows(svb, svt, svh, svw, bn, tn, hn, wn)
    o_rows = _rows(sob, sot, soh, sow, bm, tm, hm, wm)
    s = _products(q_ptr, q_rows, sqc, k_ptr, k_rows, skc, valid_m, valid_n, c_head, d,
                  BLOCK_M, BLOCK_N, BLOCK_D, PRECISION, UPCAST) * scale
    p = _softmax(s, bias_ptr, head, heads, code_m, code_n, valid_m, valid_n, WT, WH, WW, HAS_BIAS)
    for c0 in range(0, d, BLOCK_D):
        in_head = c0 + rd < d
        v = _load_chunk(v_ptr, v_rows, svc, c_head + c0 + rd, valid_n, in_head)
        o = dot(p.to(v.dtype), v, PRECISION, UPCAST)
        tl.store(out_ptr + o_rows[:, None] + (c_head + c0 + rd)[None, :] * soc, o.to(out_ptr.dtype.element_ty),
                 mask=valid_m[:, None] & in_head[None, :])


@triton.jit
def _cwa_bwd_kernel(q_ptr, k_ptr, v_ptr, g_ptr, bias_ptr, dq_ptr, dk_ptr, dv_ptr, dbias_ptr,
                    sqb, sqt, sqh, sqw, sqc, skb, skt, skh, skw, skc, svb, svt, svh, svw, svc,
                    sgb, sgt, sgh, sgw, sgc, sob, sot, soh, sow, soc,
                    L, H, W, NWT, NWH, NWW, FT, FH, FW, heads, d, scale,
                    WT: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, HAS_BIAS: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                    PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    NF: tl.constexpr = WT * WH * WW
    win = tl.program_id(0)
    head = tl.program_id(1)
    chunk = tl.program_id(2)
    rn = tl.arange(0, BLOCK_N)
    rd = chunk * BLOCK_D + tl.arange(0, BLOCK_D)      # this program's channels of the head
    in_head = rd < d
    c_head = head * d
    bn, tn, hn, wn, valid_n, code_n = _tokens(win, rn, L, H, W, NWT, NWH, NWW, FT, FH, FW, WT, WH, WW)
    k_rows = _rows(skb, skt, skh, skw, bn, tn, hn, wn)
    v_rows = _rows(svb, svt, svh, svw, bn, tn, hn, wn)
    k = _load_chunk(k_ptr, k_rows, skc, c_head + rd, valid_n, in_head)
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for m0 in range(0, NF, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M)
        bm, tm, hm, wm, valid_m, code_m = _tokens(win, rm, L, H, W, NWT, NWH, NWW, FT, FH, FW, WT, WH, WW)
        q_rows = _rows(sqb, sqt, sqh, sqw, bm, tm, hm, wm)
        g_rows = _rows(sgb, sgt, sgh, sgw, bm, tm, hm, wm)
        s = _products(q_ptr, q_rows, sqc, k_ptr, k_rows, skc, valid_m, valid_n, c_head, d,
                      BLOCK_M, BLOCK_N, BLOCK_D, PRECISION, UPCAST) * scale
        p = _softmax(s, bias_ptr, head, heads, code_m, code_n, valid_m, valid_n, WT, WH, WW, HAS_BIAS)
        dp = _products(g_ptr, g_rows, sgc, v_ptr, v_rows, svc, valid_m, valid_n, c_head, d,
                       BLOCK_M, BLOCK_N, BLOCK_D, PRECISION, UPCAST)
        ds = p * (dp - tl.sum(p * dp, axis=1)[:, None])          # rows of invalid queries are 0 (do = 0)
        q = _load_chunk(q_ptr, q_rows, sqc, c_head + rd, valid_m, in_head)
        do = _load_chunk(g_ptr, g_rows, sgc, c_head + rd, valid_m, in_head)
        dq = dot(ds.to(k.dtype), k, PRECISION, UPCAST) * scale
        o_rows = _rows(sob, sot, soh, sow, bm, tm, hm, wm)
        tl.store(dq_ptr + o_rows[:, None] + (c_head + rd)[None, :] * soc, dq.to(dq_ptr.dtype.element_ty),
                 mask=valid_m[:, None] & in_head[None, :])
        dk += dot(tl.trans(ds).to(q.dtype), q, PRECISION, UPCAST)
        dv += dot(tl.trans(p).to(do.dtype), do, PRECISION, UPCAST)
        if HAS_BIAS:
            if chunk == 0:
                tl.atomic_add(dbias_ptr + (head * NF + rm[:, None]) * NF + rn[None, :], ds,
                              mask=valid_m[:, None] & valid_n[None, :])
    o_rows = _rows(sob, sot, soh, sow, bn, tn, hn, wn)
    tl.store(dk_ptr + o_rows[:, None] + (c_head + rd)[None, :] * soc, (dk * scale).to(dk_ptr.dtype.element_ty),
             mask=valid_n[:, None] & in_head[None, :])
    tl.store(dv_ptr + o_rows[:, None] + (c_head + rd)[None, :] * soc, dv.to(dv_ptr.dtype.element_ty),
             mask=valid_n[:, None] & in_head[None, :])


def _geometry(shape, window, shift):
    """(per-axis window counts, per-axis fronts, total windows over the batch)."""
    B, L, H, W, _ = shape
    fronts = [(w - s) % w for w, s in zip(window, shift)]
    counts = [-(-(size + f) // w) for size, f, w in zip((L, H, W), fronts, window)]
    return counts, fronts, B * counts[0] * counts[1] * counts[2]


def _check_window(window) -> int:
    """The block of key positions: the window's tokens as a power of two (a whole window is held on chip)."""
    nf = window[0] * window[1] * window[2]
    if nf > MAX_WINDOW_TOKENS:
        raise NotImplementedError(
            f"clip_window_attention: the triton backend keeps a whole window on chip and serves windows of at most "
            f"{MAX_WINDOW_TOKENS} tokens, got window {tuple(window)} ({nf} tokens); use backend 'cuda' or 'cpu'")
    return max(16, triton.next_power_of_2(nf))


def _dots(query: torch.Tensor, target: configs.Target) -> dict:
    return {"PRECISION": configs.dot_precision(query.dtype), "UPCAST": configs.upcast_dots(query.dtype, target)}


def _bias_table(rel_pos_bias):
    return None if rel_pos_bias is None else rel_pos_bias.detach().to(torch.float32).contiguous()


def clip_window_attention_forward_triton(query, key, value, rel_pos_bias, num_heads, window, shift, scale):
    """query, key, value (B, L, H, W, C) (any strides) -> out (B, L, H, W, C) contiguous."""
    block_n = _check_window(window)
    B, L, H, W, C = query.shape
    out = torch.empty((B, L, H, W, C), device=query.device, dtype=query.dtype)
    counts, fronts, windows = _geometry(query.shape, window, shift)
    if out.numel() == 0:
        return out
    bias = _bias_table(rel_pos_bias)
    target = configs.target_for(query.device)
    dots = _dots(query, target)
    cfg = configs.choose("_cwa_fwd_kernel", configs.window_attention_forward(
        target, query.dtype, dots["PRECISION"], block_n, C // num_heads))
    grid = (windows, num_heads, triton.cdiv(window[0] * window[1] * window[2], cfg["BLOCK_M"]))
    _cwa_fwd_kernel[grid](query, key, value, bias if bias is not None else out, out,
                          *query.stride(), *key.stride(), *value.stride(), *out.stride(),
                          L, H, W, *counts, *fronts, num_heads, C // num_heads, scale,
                          WT=window[0], WH=window[1], WW=window[2], HAS_BIAS=bias is not None,
                          BLOCK_N=block_n, **dots, **cfg.launch_kwargs())
    return out


def clip_window_attention_backward_triton(grad_out, query, key, value, rel_pos_bias, num_heads, window, shift, scale):
    """-> (grad_query, grad_key, grad_value (B, L, H, W, C) contiguous, grad_rel_pos_bias (T, heads) or (0,))."""
    block_n = _check_window(window)
    B, L, H, W, C = query.shape
    d = C // num_heads
    grads = [torch.empty((B, L, H, W, C), device=query.device, dtype=query.dtype) for _ in range(3)]
    counts, fronts, windows = _geometry(query.shape, window, shift)
    nf = window[0] * window[1] * window[2]
    bias = _bias_table(rel_pos_bias)
    dense = torch.zeros((num_heads, nf, nf) if bias is not None else (1,), device=query.device, dtype=torch.float32)
    if grads[0].numel():
        target = configs.target_for(query.device)
        dots = _dots(query, target)
        cfg = configs.choose("_cwa_bwd_kernel", configs.window_attention_backward(
            target, query.dtype, dots["PRECISION"], block_n, d))
        _cwa_bwd_kernel[(windows, num_heads, triton.cdiv(d, cfg["BLOCK_D"]))](
            query, key, value, grad_out, bias if bias is not None else dense, *grads, dense,
            *query.stride(), *key.stride(), *value.stride(), *grad_out.stride(), *grads[0].stride(),
            L, H, W, *counts, *fronts, num_heads, d, scale,
            WT=window[0], WH=window[1], WW=window[2], HAS_BIAS=bias is not None,
            BLOCK_N=block_n, **dots, **cfg.launch_kwargs())
    if bias is None:
        return (*grads, query.new_empty((0,)))
    index = relative_position_index(tuple(window)).to(query.device).view(-1)
    table = torch.zeros(bias.shape, device=query.device, dtype=torch.float32)
    table.index_add_(0, index, dense.view(num_heads, nf * nf).t())
    return (*grads, table.to(rel_pos_bias.dtype))
