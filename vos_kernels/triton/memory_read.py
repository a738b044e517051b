"""Triton kernels of the L2-affinity memory read (math: csrc/memory_read.cpp, csrc/cpu/memory_read_kernel.cpp).

Per batch item, a = 2 scale, s_ij = a <mk_i, qk_j> - scale |mk_i|^2, computed one
(query block x memory tile) at a time with tl.dot and never written to memory.

top-k forward, split over the memory axis so that every SM has programs (configs.memory_read_chunk):
  `_topk_chunk_kernel` runs one program per (query block, memory chunk of whole BM tiles) and keeps
  a running k-buffer (values, indices) per query in registers. For each memory tile it counts the
  scores that beat the buffer's current minimum (ties: the lower index wins) and inserts only those,
  best first, re-filtering after every insertion; after the first tiles almost no score qualifies,
  so a tile costs one compare per score. The unsorted buffer and a NaN flag go to (B, S, N, KP)
  scratch. `_topk_merge_kernel` takes the k best of the S x k candidates per query in the same
  order (decreasing score, increasing index): the indices of a single scan exactly (the weights to a
  few ulps, the softmax sums in another order), and
  writes (B, N, k) indices and softmax weights. `_sparse_readout_kernel` gathers the k value
  columns of each query.
top-k backward: `_topk_grad_value_kernel` gathers dp = <g, mv_idx>, scatters grad_mv (atomics)
  and writes ds = w (dp - <w, dp>); `_topk_grad_key_kernel` gathers grad_qk and scatters grad_mk.
dense forward: flash-style online softmax over memory tiles (`_dense_forward_kernel`), one
  program per (query block, value-channel block); lse = max + log(sum) is saved.
dense backward: `_dense_grad_key_kernel` (per memory tile: recompute P from lse, dP = mv^T g,
  dS = P (dP - <g, out>); grad_mk in registers, grad_qk by atomics) and `_dense_grad_value_kernel`
  (per memory tile and value-channel block: grad_mv = g P^T).
Scores, softmax and accumulators are float32. Float32 dots follow torch's float32 matmul
precision (IEEE under "highest", TF32 otherwise: configs.dot_precision); bfloat16/float16 dots
take operands in the input dtype (P and dS are rounded to it, as flash attention does).
Gradients of memory tensors accumulate in float32. Tile sizes: configs.memory_read_*.
"""
import torch
import triton
import triton.language as tl

from . import configs
from ._common import dot

# A jit function may read a global only when it is a tl.constexpr (the interpreter does not check).
BIG_INDEX = tl.constexpr(2**31 - 1)
MAX_KEY_CHANNELS = configs.MEMORY_READ_MAX_KEY_CHANNELS


@triton.jit
def _scores(q, k_ptr, sk_c, sk_m, offs_c, cols, c_ok, col_ok, scale, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """s (BN, BM) = 2 scale <k_i, q_j> - scale |k_i|^2 for one memory tile; q is (BN, CKP)."""
    kt = tl.load(k_ptr + offs_c[:, None] * sk_c + cols[None, :].to(tl.int64) * sk_m,
                 mask=c_ok[:, None] & col_ok[None, :], other=0.0)                      # (CKP, BM)
    kf = kt.to(tl.float32)
    sq = tl.sum(kf * kf, axis=0)
    return dot(q, kt, PRECISION, UPCAST) * (2.0 * scale) - scale * sq[None, :], kt


@triton.jit
def _buffer_min(bv, bi, kslot):
    """The buffer's weakest entry per row: min value, ties: the highest index; and its slot."""
    slots = tl.arange(0, bv.shape[1])
    thr_v = tl.min(tl.where(kslot[None, :], bv, float("inf")), axis=1)
    at_min = kslot[None, :] & (bv == thr_v[:, None])
    thr_i = tl.max(tl.where(at_min, bi, -1), axis=1)
    lo = tl.min(tl.where(at_min & (bi == thr_i[:, None]), slots[None, :], bv.shape[1]), axis=1)
    return thr_v, thr_i, lo


@triton.jit
def _beats(s, cols, thr_v, thr_i):
    return (s > thr_v[:, None]) | ((s == thr_v[:, None]) & (cols[None, :] < thr_i[:, None]))


@triton.jit
def _topk_chunk_kernel(q_ptr, k_ptr, cand_v_ptr, cand_i_ptr, nan_ptr, N, M, CK, CHUNK, scale,
                       sq_b, sq_c, sq_n, sk_b, sk_c, sk_m,
                       K: tl.constexpr, KP: tl.constexpr, CKP: tl.constexpr,
                       BN: tl.constexpr, BM: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """The top-k (value, index) of one (query block, memory chunk), unsorted, into (B, S, N, KP) scratch
    (empty slots: -inf, BIG_INDEX), and whether the chunk holds a NaN score per query, into (B, S, N)."""
    b = tl.program_id(2).to(tl.int64)
    chunk = tl.program_id(1)
    num_chunks = tl.num_programs(1)
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    row_ok = rows < N
    offs_c = tl.arange(0, CKP)
    c_ok = offs_c < CK
    q = tl.load(q_ptr + b * sq_b + rows[:, None].to(tl.int64) * sq_n + offs_c[None, :] * sq_c,
                mask=row_ok[:, None] & c_ok[None, :], other=0.0)                        # (BN, CKP)
    slots = tl.arange(0, KP)
    kslot = slots < K
    bv = tl.full((BN, KP), float("-inf"), tl.float32)
    bi = tl.full((BN, KP), BIG_INDEX, tl.int32)
    has_nan = tl.zeros((BN,), tl.int32)
    thr_v, thr_i, lo = _buffer_min(bv, bi, kslot)
    m_end = tl.minimum(M, (chunk + 1) * CHUNK)
    for m0 in range(chunk * CHUNK, m_end, BM):
        cols = m0 + tl.arange(0, BM)
        col_ok = cols < m_end
        s, _ = _scores(q, k_ptr + b * sk_b, sk_c, sk_m, offs_c, cols, c_ok, col_ok, scale, PRECISION, UPCAST)
        has_nan |= tl.max((col_ok[None, :] & (s != s)).to(tl.int32), axis=1)
        cand = col_ok[None, :] & _beats(s, cols, thr_v, thr_i)
        remaining = tl.max(tl.sum(cand.to(tl.int32), axis=1))
        while remaining > 0:
            best_v = tl.max(tl.where(cand, s, float("-inf")), axis=1)
            best_i = tl.min(tl.where(cand & (s == best_v[:, None]), cols[None, :], BIG_INDEX), axis=1)
            take = (best_i < BIG_INDEX)[:, None] & (slots[None, :] == lo[:, None])
            bv = tl.where(take, best_v[:, None], bv)
            bi = tl.where(take, best_i[:, None], bi)
            thr_v, thr_i, lo = _buffer_min(bv, bi, kslot)
            cand = cand & (cols[None, :] != best_i[:, None]) & _beats(s, cols, thr_v, thr_i)
            remaining = tl.max(tl.sum(cand.to(tl.int32), axis=1))
    row_base = (b * num_chunks + chunk) * N + rows.to(tl.int64)                          # (BN,) in (B, S, N)
    tl.store(cand_v_ptr + row_base[:, None] * KP + slots[None, :], bv, mask=row_ok[:, None])
    tl.store(cand_i_ptr + row_base[:, None] * KP + slots[None, :], bi, mask=row_ok[:, None])
    tl.store(nan_ptr + row_base, has_nan, mask=row_ok)


@triton.jit
def _topk_merge_kernel(cand_v_ptr, cand_i_ptr, nan_ptr, idx_ptr, w_ptr, N, S,
                       K: tl.constexpr, KP: tl.constexpr, SP: tl.constexpr, BN: tl.constexpr):
    """The k best of the S chunks' candidates per query (decreasing value, ties: the lower index), sorted,
    as (B, N, k) int64 indices and float32 softmax weights (NaN when any chunk saw a NaN score)."""
    b = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    row_ok = rows < N
    # candidate c = chunk * KP + slot; the (B, S, N, KP) scratch is read as a (BN, SP * KP) tile
    cand = tl.arange(0, SP * KP)
    chunk, slot = cand // KP, cand % KP
    cand_ok = (chunk < S) & (slot < K)
    offs = ((b * S + chunk[None, :]) * N + rows[:, None].to(tl.int64)) * KP + slot[None, :]
    ok = row_ok[:, None] & cand_ok[None, :]
    cv = tl.load(cand_v_ptr + offs, mask=ok, other=float("-inf"))
    ci = tl.load(cand_i_ptr + offs, mask=ok, other=BIG_INDEX)
    nan_offs = (b * S + chunk[None, :]) * N + rows[:, None].to(tl.int64)
    has_nan = tl.max(tl.load(nan_ptr + nan_offs, mask=row_ok[:, None] & (chunk < S)[None, :] & (slot == 0)[None, :],
                             other=0), axis=1)
    slots = tl.arange(0, KP)
    kslot = slots < K
    sel_v = tl.full((BN, KP), float("-inf"), tl.float32)
    sel_i = tl.zeros((BN, KP), tl.int64)
    live = ok
    for t in range(K):
        best_v = tl.max(tl.where(live, cv, float("-inf")), axis=1)
        best_i = tl.min(tl.where(live & (cv == best_v[:, None]), ci, BIG_INDEX), axis=1)
        live = live & ~((ci == best_i[:, None]) & (cv == best_v[:, None]))
        # a query whose scores are all NaN never fills its buffers: point at entry t (its weights are NaN)
        best_i = tl.where(best_i < BIG_INDEX, best_i, t)
        sel_v = tl.where(slots[None, :] == t, best_v[:, None], sel_v)
        sel_i = tl.where(slots[None, :] == t, best_i[:, None].to(tl.int64), sel_i)
    top = tl.max(tl.where(kslot[None, :], sel_v, float("-inf")), axis=1)
    e = tl.where(kslot[None, :], tl.exp(sel_v - top[:, None]), 0.0)
    inv = 1.0 / tl.sum(e, axis=1)
    inv = tl.where(has_nan > 0, float("nan"), inv)
    out = b * N * K + rows[:, None].to(tl.int64) * K + slots[None, :]
    store_ok = row_ok[:, None] & kslot[None, :]
    tl.store(idx_ptr + out, sel_i, mask=store_ok)
    tl.store(w_ptr + out, e * inv[:, None], mask=store_ok)


@triton.jit
def _sparse_readout_kernel(v_ptr, idx_ptr, w_ptr, out_ptr, N, CV, sv_b, sv_c, sv_m,
                           K: tl.constexpr, BN: tl.constexpr, BCV: tl.constexpr):
    b = tl.program_id(2).to(tl.int64)
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    chans = tl.program_id(1) * BCV + tl.arange(0, BCV)
    row_ok, chan_ok = rows < N, chans < CV
    base = b * N * K + rows.to(tl.int64) * K
    acc = tl.zeros((BCV, BN), tl.float32)
    for t in range(K):
        i = tl.load(idx_ptr + base + t, mask=row_ok, other=0)
        w = tl.load(w_ptr + base + t, mask=row_ok, other=0.0)
        vals = tl.load(v_ptr + b * sv_b + chans[:, None].to(tl.int64) * sv_c + i[None, :] * sv_m,
                       mask=chan_ok[:, None] & row_ok[None, :], other=0.0)
        acc += vals.to(tl.float32) * w[None, :]
    tl.store(out_ptr + b * CV * N + chans[:, None].to(tl.int64) * N + rows[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=chan_ok[:, None] & row_ok[None, :])


@triton.jit
def _topk_grad_value_kernel(g_ptr, v_ptr, idx_ptr, w_ptr, ds_ptr, gv_ptr, N, M, CV,
                            sg_b, sg_c, sg_n, sv_b, sv_c, sv_m,
                            K: tl.constexpr, KP: tl.constexpr, BN: tl.constexpr, BCV: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    row_ok = rows < N
    base = b * N * K + rows.to(tl.int64) * K
    slots = tl.arange(0, KP)
    kslot = slots < K
    w = tl.load(w_ptr + base[:, None] + slots[None, :], mask=row_ok[:, None] & kslot[None, :], other=0.0)
    dp = tl.zeros((BN, KP), tl.float32)
    for c0 in range(0, CV, BCV):
        chans = c0 + tl.arange(0, BCV)
        ok = (chans < CV)[:, None] & row_ok[None, :]
        g = tl.load(g_ptr + b * sg_b + chans[:, None].to(tl.int64) * sg_c + rows[None, :].to(tl.int64) * sg_n,
                    mask=ok, other=0.0).to(tl.float32)                                # (BCV, BN)
        for t in range(K):
            i = tl.load(idx_ptr + base + t, mask=row_ok, other=0)
            w_t = tl.sum(tl.where(slots[None, :] == t, w, 0.0), axis=1)
            col = chans[:, None].to(tl.int64) * sv_c + i[None, :] * sv_m
            vals = tl.load(v_ptr + b * sv_b + col, mask=ok, other=0.0).to(tl.float32)
            dp += tl.where(slots[None, :] == t, tl.sum(vals * g, axis=0)[:, None], 0.0)
            tl.atomic_add(gv_ptr + b * CV * M + chans[:, None].to(tl.int64) * M + i[None, :], g * w_t[None, :],
                          mask=ok)
    ds = w * (dp - tl.sum(w * dp, axis=1)[:, None])
    tl.store(ds_ptr + base[:, None] + slots[None, :], ds, mask=row_ok[:, None] & kslot[None, :])


@triton.jit
def _topk_grad_key_kernel(q_ptr, k_ptr, idx_ptr, ds_ptr, gq_ptr, gk_ptr, N, M, CK, scale,
                          sq_b, sq_c, sq_n, sk_b, sk_c, sk_m,
                          K: tl.constexpr, BN: tl.constexpr, BCK: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    row_ok = rows < N
    base = b * N * K + rows.to(tl.int64) * K
    for c0 in range(0, CK, BCK):
        chans = c0 + tl.arange(0, BCK)
        ok = (chans < CK)[:, None] & row_ok[None, :]
        q = tl.load(q_ptr + b * sq_b + chans[:, None].to(tl.int64) * sq_c + rows[None, :].to(tl.int64) * sq_n,
                    mask=ok, other=0.0).to(tl.float32)                                # (BCK, BN)
        acc = tl.zeros((BCK, BN), tl.float32)
        for t in range(K):
            i = tl.load(idx_ptr + base + t, mask=row_ok, other=0)
            ds = tl.load(ds_ptr + base + t, mask=row_ok, other=0.0)
            kv = tl.load(k_ptr + b * sk_b + chans[:, None].to(tl.int64) * sk_c + i[None, :] * sk_m,
                         mask=ok, other=0.0).to(tl.float32)
            acc += ds[None, :] * kv
            tl.atomic_add(gk_ptr + b * CK * M + chans[:, None].to(tl.int64) * M + i[None, :],
                          ds[None, :] * (2.0 * scale) * (q - kv), mask=ok)
        tl.store(gq_ptr + b * CK * N + chans[:, None].to(tl.int64) * N + rows[None, :],
                 (acc * (2.0 * scale)).to(gq_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _dense_forward_kernel(q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, N, M, CK, CV, scale,
                          sq_b, sq_c, sq_n, sk_b, sk_c, sk_m, sv_b, sv_c, sv_m,
                          CKP: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr, BCV: tl.constexpr,
                          PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    b = tl.program_id(2).to(tl.int64)
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    chans = tl.program_id(1) * BCV + tl.arange(0, BCV)
    row_ok, chan_ok = rows < N, chans < CV
    offs_c = tl.arange(0, CKP)
    c_ok = offs_c < CK
    q = tl.load(q_ptr + b * sq_b + rows[:, None].to(tl.int64) * sq_n + offs_c[None, :] * sq_c,
                mask=row_ok[:, None] & c_ok[None, :], other=0.0)
    run_max = tl.full((BN,), float("-inf"), tl.float32)
    run_sum = tl.zeros((BN,), tl.float32)
    has_nan = tl.zeros((BN,), tl.int32)
    acc = tl.zeros((BN, BCV), tl.float32)
    for m0 in range(0, M, BM):
        cols = m0 + tl.arange(0, BM)
        col_ok = cols < M
        s, _ = _scores(q, k_ptr + b * sk_b, sk_c, sk_m, offs_c, cols, c_ok, col_ok, scale, PRECISION, UPCAST)
        has_nan |= tl.max((col_ok[None, :] & (s != s)).to(tl.int32), axis=1)
        s = tl.where(col_ok[None, :], s, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(s, axis=1))
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        alpha = tl.exp(run_max - shift)
        p = tl.exp(s - shift[:, None])
        run_sum = run_sum * alpha + tl.sum(p, axis=1)
        run_max = new_max
        vt = tl.load(v_ptr + b * sv_b + cols[:, None].to(tl.int64) * sv_m + chans[None, :].to(tl.int64) * sv_c,
                     mask=col_ok[:, None] & chan_ok[None, :], other=0.0)                 # (BM, BCV)
        acc = acc * alpha[:, None] + dot(p.to(vt.dtype), vt, PRECISION, UPCAST)
    inv = tl.where(has_nan > 0, float("nan"), 1.0 / run_sum)
    tl.store(out_ptr + b * CV * N + chans[None, :].to(tl.int64) * N + rows[:, None],
             (acc * inv[:, None]).to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & chan_ok[None, :])
    if tl.program_id(1) == 0:
        lse = tl.where(has_nan > 0, float("nan"), run_max + tl.log(run_sum))
        tl.store(lse_ptr + b * N + rows, lse, mask=row_ok)


@triton.jit
def _dense_probs(q, k_base, sk_c, sk_m, offs_c, cols, c_ok, col_ok, rows, row_ok, lse_ptr, scale,
                 PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """P (BN, BM) = exp(s - lse) of one (query block, memory tile), and the key tile (CKP, BM)."""
    s, kt = _scores(q, k_base, sk_c, sk_m, offs_c, cols, c_ok, col_ok, scale, PRECISION, UPCAST)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    p = tl.exp(s - lse[:, None])
    return tl.where(row_ok[:, None] & col_ok[None, :], p, 0.0), kt


@triton.jit
def _dense_grad_key_kernel(q_ptr, k_ptr, v_ptr, g_ptr, lse_ptr, delta_ptr, gq_ptr, gk_ptr, N, M, CK, CV, scale,
                           sq_b, sq_c, sq_n, sk_b, sk_c, sk_m, sv_b, sv_c, sv_m, sg_b, sg_c, sg_n,
                           CKP: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr, BCV: tl.constexpr,
                           PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    cols = tl.program_id(0) * BM + tl.arange(0, BM)
    col_ok = cols < M
    offs_c = tl.arange(0, CKP)
    c_ok = offs_c < CK
    gk_acc = tl.zeros((CKP, BM), tl.float32)
    rowsum = tl.zeros((BM,), tl.float32)
    for n0 in range(0, N, BN):
        rows = n0 + tl.arange(0, BN)
        row_ok = rows < N
        q = tl.load(q_ptr + b * sq_b + rows[:, None].to(tl.int64) * sq_n + offs_c[None, :] * sq_c,
                    mask=row_ok[:, None] & c_ok[None, :], other=0.0)
        p, kt = _dense_probs(q, k_ptr + b * sk_b, sk_c, sk_m, offs_c, cols, c_ok, col_ok, rows, row_ok,
                             lse_ptr + b * N, scale, PRECISION, UPCAST)
        dp = tl.zeros((BN, BM), tl.float32)
        for c0 in range(0, CV, BCV):
            chans = c0 + tl.arange(0, BCV)
            chan_ok = chans < CV
            gt = tl.load(g_ptr + b * sg_b + rows[:, None].to(tl.int64) * sg_n + chans[None, :].to(tl.int64) * sg_c,
                         mask=row_ok[:, None] & chan_ok[None, :], other=0.0)            # (BN, BCV)
            vt = tl.load(v_ptr + b * sv_b + chans[:, None].to(tl.int64) * sv_c + cols[None, :].to(tl.int64) * sv_m,
                         mask=chan_ok[:, None] & col_ok[None, :], other=0.0)            # (BCV, BM)
            dp += dot(gt, vt, PRECISION, UPCAST)
        delta = tl.load(delta_ptr + b * N + rows, mask=row_ok, other=0.0)
        ds = p * (dp - delta[:, None])                                                  # (BN, BM)
        rowsum += tl.sum(ds, axis=0)
        gk_acc += dot(tl.trans(q), ds.to(q.dtype), PRECISION, UPCAST)                                # (CKP, BM)
        gq = dot(kt, tl.trans(ds).to(kt.dtype), PRECISION, UPCAST) * (2.0 * scale)                   # (CKP, BN)
        tl.atomic_add(gq_ptr + b * CK * N + offs_c[:, None].to(tl.int64) * N + rows[None, :], gq,
                      mask=c_ok[:, None] & row_ok[None, :])
    kt = tl.load(k_ptr + b * sk_b + offs_c[:, None] * sk_c + cols[None, :].to(tl.int64) * sk_m,
                 mask=c_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
    gk = (gk_acc - kt * rowsum[None, :]) * (2.0 * scale)
    tl.store(gk_ptr + b * CK * M + offs_c[:, None].to(tl.int64) * M + cols[None, :],
             gk.to(gk_ptr.dtype.element_ty), mask=c_ok[:, None] & col_ok[None, :])


@triton.jit
def _dense_grad_value_kernel(q_ptr, k_ptr, g_ptr, lse_ptr, gv_ptr, N, M, CK, CV, scale,
                             sq_b, sq_c, sq_n, sk_b, sk_c, sk_m, sg_b, sg_c, sg_n,
                             CKP: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr, BCV: tl.constexpr,
                             PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    b = tl.program_id(2).to(tl.int64)
    cols = tl.program_id(0) * BM + tl.arange(0, BM)
    chans = tl.program_id(1) * BCV + tl.arange(0, BCV)
    col_ok, chan_ok = cols < M, chans < CV
    offs_c = tl.arange(0, CKP)
    c_ok = offs_c < CK
    acc = tl.zeros((BCV, BM), tl.float32)
    for n0 in range(0, N, BN):
        rows = n0 + tl.arange(0, BN)
        row_ok = rows < N
        q = tl.load(q_ptr + b * sq_b + rows[:, None].to(tl.int64) * sq_n + offs_c[None, :] * sq_c,
                    mask=row_ok[:, None] & c_ok[None, :], other=0.0)
        p, _ = _dense_probs(q, k_ptr + b * sk_b, sk_c, sk_m, offs_c, cols, c_ok, col_ok, rows, row_ok,
                            lse_ptr + b * N, scale, PRECISION, UPCAST)
        g = tl.load(g_ptr + b * sg_b + chans[:, None].to(tl.int64) * sg_c + rows[None, :].to(tl.int64) * sg_n,
                    mask=chan_ok[:, None] & row_ok[None, :], other=0.0)                 # (BCV, BN)
        acc += dot(g, p.to(g.dtype), PRECISION, UPCAST)
    tl.store(gv_ptr + b * CV * M + chans[:, None].to(tl.int64) * M + cols[None, :],
             acc.to(gv_ptr.dtype.element_ty), mask=chan_ok[:, None] & col_ok[None, :])


# --- launchers --------------------------------------------------------------------------------
def _key_channels(query_key: torch.Tensor) -> int:
    ck = query_key.shape[1]
    if ck > MAX_KEY_CHANNELS:
        raise ValueError(f"memory_read: the triton backend supports query_key with at most {MAX_KEY_CHANNELS} "
                         f"channels (Ck), got {ck}; use backend='cpu' or 'reference'")
    return max(16, triton.next_power_of_2(ck))


def _dots(t: torch.Tensor, target: configs.Target) -> dict:
    """The PRECISION and UPCAST constexprs of the kernels' tl.dot for inputs like `t`."""
    return {"PRECISION": configs.dot_precision(t.dtype), "UPCAST": configs.upcast_dots(t.dtype, target)}


def memory_read_topk_forward_triton(query_key, memory_key, memory_value, k: int, scale: float):
    """(B, Ck, N), (B, Ck, M), (B, Cv, M) -> out (B, Cv, N), indices (B, N, k) int64, weights (B, N, k) float32."""
    B, ck, N = query_key.shape
    M, cv = memory_key.shape[2], memory_value.shape[1]
    if not 1 <= k <= M:
        raise ValueError(f"memory_read: k must be in [1, M = {M}], got {k}")
    ckp = _key_channels(query_key)
    indices = torch.empty((B, N, k), device=query_key.device, dtype=torch.long)
    weights = torch.empty((B, N, k), device=query_key.device, dtype=torch.float32)
    out = torch.empty((B, cv, N), device=query_key.device, dtype=query_key.dtype)
    if B * N == 0:
        return out.zero_(), indices, weights
    target = configs.target_for(query_key.device)
    dots = _dots(query_key, target)
    kp = max(2, triton.next_power_of_2(k))
    select = configs.choose("_topk_chunk_kernel", configs.memory_read_topk_select(
        target, query_key.dtype, dots["PRECISION"]))
    query_blocks = triton.cdiv(N, select["BN"])
    chunk = configs.memory_read_chunk(target, query_blocks * B, M, select["BM"])
    splits = triton.cdiv(M, chunk)
    cand_v = torch.empty((B, splits, N, kp), device=query_key.device, dtype=torch.float32)
    cand_i = torch.empty((B, splits, N, kp), device=query_key.device, dtype=torch.int32)
    chunk_nan = torch.empty((B, splits, N), device=query_key.device, dtype=torch.int32)
    _topk_chunk_kernel[(query_blocks, splits, B)](
        query_key, memory_key, cand_v, cand_i, chunk_nan, N, M, ck, chunk, scale, *query_key.stride(),
        *memory_key.stride(), K=k, KP=kp, CKP=ckp, **dots, **select.launch_kwargs())
    sp = triton.next_power_of_2(splits)
    merge = configs.choose("_topk_merge_kernel", configs.memory_read_topk_merge(target, sp * kp))
    _topk_merge_kernel[(triton.cdiv(N, merge["BN"]), B)](
        cand_v, cand_i, chunk_nan, indices, weights, N, splits, K=k, KP=kp, SP=sp, **merge.launch_kwargs())
    readout = configs.choose("_sparse_readout_kernel", configs.memory_read_sparse_readout(target))
    _sparse_readout_kernel[(triton.cdiv(N, readout["BN"]), triton.cdiv(cv, readout["BCV"]), B)](
        memory_value, indices, weights, out, N, cv, *memory_value.stride(), K=k, **readout.launch_kwargs())
    return out, indices, weights


def memory_read_topk_backward_triton(grad_out, query_key, memory_key, memory_value, indices, weights, scale: float):
    """Gradients (B, Ck, N), (B, Ck, M), (B, Cv, M) of the top-k read, through the kept entries."""
    B, ck, N = query_key.shape
    M, cv, k = memory_key.shape[2], memory_value.shape[1], indices.shape[2]
    indices, weights = indices.contiguous(), weights.to(torch.float32).contiguous()
    dev = query_key.device
    grad_mv = torch.zeros((B, cv, M), device=dev, dtype=torch.float32)
    grad_mk = torch.zeros((B, ck, M), device=dev, dtype=torch.float32)
    grad_qk = torch.empty((B, ck, N), device=dev, dtype=query_key.dtype)
    ds = torch.empty((B, N, k), device=dev, dtype=torch.float32)
    if B * N > 0:
        target = configs.target_for(dev)
        value = configs.choose("_topk_grad_value_kernel", configs.memory_read_topk_grad_value(target))
        _topk_grad_value_kernel[(triton.cdiv(N, value["BN"]), B)](
            grad_out, memory_value, indices, weights, ds, grad_mv, N, M, cv, *grad_out.stride(),
            *memory_value.stride(), K=k, KP=max(2, triton.next_power_of_2(k)), **value.launch_kwargs())
        key = configs.choose("_topk_grad_key_kernel", configs.memory_read_topk_grad_key(target))
        _topk_grad_key_kernel[(triton.cdiv(N, key["BN"]), B)](
            query_key, memory_key, indices, ds, grad_qk, grad_mk, N, M, ck, scale, *query_key.stride(),
            *memory_key.stride(), K=k, **key.launch_kwargs())
    else:
        grad_qk.zero_()
    return grad_qk, grad_mk.to(memory_key.dtype), grad_mv.to(memory_value.dtype)


def memory_read_dense_forward_triton(query_key, memory_key, memory_value, scale: float):
    """-> out (B, Cv, N), lse (B, N) float32: softmax over all M memory entries."""
    B, ck, N = query_key.shape
    M, cv = memory_key.shape[2], memory_value.shape[1]
    ckp = _key_channels(query_key)
    out = torch.empty((B, cv, N), device=query_key.device, dtype=query_key.dtype)
    lse = torch.empty((B, N), device=query_key.device, dtype=torch.float32)
    if B * N > 0:
        target = configs.target_for(query_key.device)
        dots = _dots(query_key, target)
        cfg = configs.choose("_dense_forward_kernel", configs.memory_read_dense_forward(
            target, query_key.dtype, dots["PRECISION"]))
        _dense_forward_kernel[(triton.cdiv(N, cfg["BN"]), triton.cdiv(cv, cfg["BCV"]), B)](
            query_key, memory_key, memory_value, out, lse, N, M, ck, cv, scale, *query_key.stride(),
            *memory_key.stride(), *memory_value.stride(), CKP=ckp, **dots, **cfg.launch_kwargs())
    return out, lse


def memory_read_dense_backward_triton(grad_out, query_key, memory_key, memory_value, out, lse, scale: float):
    """Gradients (B, Ck, N), (B, Ck, M), (B, Cv, M) of the dense read (recomputes P from lse)."""
    B, ck, N = query_key.shape
    M, cv = memory_key.shape[2], memory_value.shape[1]
    ckp = _key_channels(query_key)
    dev = query_key.device
    delta = (grad_out.to(torch.float32) * out.to(torch.float32)).sum(1).contiguous()    # (B, N): <g_j, out_j>
    lse = lse.to(torch.float32).contiguous()
    grad_qk = torch.zeros((B, ck, N), device=dev, dtype=torch.float32)
    grad_mk = torch.empty((B, ck, M), device=dev, dtype=memory_key.dtype)
    grad_mv = torch.empty((B, cv, M), device=dev, dtype=memory_value.dtype)
    if B * N == 0:
        return grad_qk.to(query_key.dtype), grad_mk.zero_(), grad_mv.zero_()
    target = configs.target_for(dev)
    dots = _dots(query_key, target)
    candidates = configs.memory_read_dense_backward(target, query_key.dtype, dots["PRECISION"])
    cfg = configs.choose("_dense_grad_key_kernel", candidates)
    _dense_grad_key_kernel[(triton.cdiv(M, cfg["BM"]), B)](
        query_key, memory_key, memory_value, grad_out, lse, delta, grad_qk, grad_mk, N, M, ck, cv, scale,
        *query_key.stride(), *memory_key.stride(), *memory_value.stride(), *grad_out.stride(),
        CKP=ckp, **dots, **cfg.launch_kwargs())
    cfg = configs.choose("_dense_grad_value_kernel", candidates)
    _dense_grad_value_kernel[(triton.cdiv(M, cfg["BM"]), triton.cdiv(cv, cfg["BCV"]), B)](
        query_key, memory_key, grad_out, lse, grad_mv, N, M, ck, cv, scale, *query_key.stride(),
        *memory_key.stride(), *grad_out.stride(), CKP=ckp, **dots, **cfg.launch_kwargs())
    return grad_qk.to(query_key.dtype), grad_mk, grad_mv
