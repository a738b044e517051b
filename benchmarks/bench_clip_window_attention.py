"""clip_window_attention benchmark: PCVOS's intra-clip refinement, L = 5 and 15 frames of
30 x 54 (480p at stride 16), C = 256, 8 heads (d = 32), window (2, 7, 7), shift (1, 3, 3), with
Video Swin's relative position bias; forward, backward (query, key, value, table) and both.

Variants: "eager" (baseline) = Video Swin's formulation (pad + roll + partition + mask, matmul,
softmax, matmul, reverse, roll back, crop); "sdpa" = the same partitioned windows through
F.scaled_dot_product_attention (partition and reverse included); "fused" = vos_kernels (auto
backend: the C++ kernel on CPU; on CUDA "fused-cuda" and "fused-triton").
The two definitions differ at windows that Video Swin fills with padding tokens (the contract
has partial windows there), so the pass column compares outputs / gradients of query, key and
value on the tokens whose windows contain no padding (and checks the fused output is finite
everywhere); the bias-table gradient sums over all windows and is not compared here (the tests
compare it against the contract's reference).

Floor (CPU, 2 threads, float32, L = 5), written before optimising:
- The contract's partial windows: sum over windows of n^2 = (1+4+4)(9+3*49+36)(9+7*49+4) =
  615,168 per head; forward = 2 products of 2 n^2 d flops = 4 * 32 * 8 * 615,168 = 0.63 GFLOP
  -> 3.2 ms at ~195 GFLOP/s; Video Swin's padded clip (6 x 35 x 56, 120 full windows of 98) does
  4 * 98^2 * 256 * 120 = 1.18 GFLOP -> 6 ms. Softmax: 4.9 M exps. Bytes: q, k, v, out
  4 x 8100 x 256 x 4 B = 33 MB -> 0.9 ms at ~36 GB/s. Backward: 5 products (S recomputed, dP,
  dV, dQ, dK) = 2.5x the forward flops -> 8 ms; reads q, k, v, dO, writes dq, dk, dv: 58 MB.
- Prediction: the per-window gather + register-blocked small GEMMs reach ~50% of torch.mm's
  rate on such small matrices, so forward ~8 ms (SDPA peer measured 22-29 ms, Video Swin eager
  65-70 ms: ~3x and ~8x), backward ~20 ms against ~150 ms for eager autograd.
Outcome (commit after "8x2 / 8x1 tiles", 2 threads, machine at load average ~14 on 2 cores, so
absolute times are inflated ~20-30x and only the in-process ratios mean anything): L = 5 forward
fused 20.3x eager, 15.7x SDPA; backward 8.1x eager autograd; L = 15 forward 17.6x / 12.4x,
backward 5.8x. Peak extra memory 7.9 MB against 155 MB (eager). Load-robust check: CPU time
with 1 thread (time.process_time) at L = 5: eager 193 ms, SDPA 108 ms, fused forward 17 ms
(0.63 GFLOP -> ~37 GFLOP/s; the rest of the gap to the floor is the gather of q, k, v rows
from DRAM and the per-window transposes), fused backward 44 ms. Rows: results/*.csv.

Memory floor column (benchmarks/bandwidth.py): reads query, key, value (L H W C each) and the
bias, writes L H W C; backward also reads the upstream and writes the four gradients. Windowed
attention does 2 x 98 x 2 C FLOPs per token (window 2 x 7 x 7), so it is compute-bound and its %
of memory floor is small by nature.
"""
from __future__ import annotations

import functools

import torch

import vos_kernels
from benchmarks.bandwidth import compulsory_bytes
from benchmarks.harness import BenchCase, backward_only, default_compare, forward_backward, fused_variants
from vos_kernels.reference.video_swin_window_attention import video_swin_window_attention

HEIGHT, WIDTH, CHANNELS, HEADS = 30, 54, 256, 8
TINY = (9, 10, 16)  # --tiny (dry runs): H, W, C (still two partial windows along each axis)
WINDOW, SHIFT = (2, 7, 7), (1, 3, 3)
INPUTS = ("query", "key", "value", "rel_pos_bias")


def _eager(attention):
    def run(query, key, value, rel_pos_bias):
        return video_swin_window_attention(query, key, value, HEADS, WINDOW, SHIFT, rel_pos_bias, attention=attention)
    return run


def _fused(backend: str):
    def run(query, key, value, rel_pos_bias):
        return vos_kernels.clip_window_attention(query, key, value, num_heads=HEADS, window=WINDOW, shift=SHIFT,
                                                 rel_pos_bias=rel_pos_bias, backend=backend)
    return run


@functools.lru_cache(maxsize=4)
def _agreeing_tokens(length: int, height: int = HEIGHT, width: int = WIDTH) -> torch.Tensor:
    """(L, H, W) bool: tokens whose window holds no Video Swin padding token (both definitions agree)."""
    masks = []
    for size, w, s in zip((length, height, width), WINDOW, SHIFT):
        front, padded = (w - s) % w, -(-size // w) * w
        window_of = (torch.arange(size) + front) // w
        last = window_of * w - front + w                     # one past the window's last position
        masks.append(last <= size if padded > size else torch.ones(size, dtype=torch.bool))
    return masks[0][:, None, None] & masks[1][None, :, None] & masks[2][None, None, :]


def _compare(out, ref) -> bool:
    outs, refs = (out if isinstance(out, (tuple, list)) else (out,)), (ref if isinstance(ref, (tuple, list)) else (ref,))
    for o, r in list(zip(outs, refs))[:3]:                 # output, or the gradients of query, key, value
        keep = _agreeing_tokens(*o.shape[1:4]).to(o.device)
        if not torch.isfinite(o).all() or not default_compare(o[:, keep], r[:, keep]):
            return False
    return True


def _variants(device: str) -> dict:
    variants = {"eager": _eager("eager"), "sdpa": _eager("sdpa")}
    return {**variants, **fused_variants(device, "clip_window_attention", _fused)}


def _setup(length: int, dtype: torch.dtype, device: str, height: int = HEIGHT, width: int = WIDTH,
           channels: int = CHANNELS):
    def setup():
        g = torch.Generator().manual_seed(length)
        make = lambda *shape, s=1.0: (torch.randn(*shape, generator=g) * s).to(device, dtype).requires_grad_()  # noqa: E731
        rows = (2 * WINDOW[0] - 1) * (2 * WINDOW[1] - 1) * (2 * WINDOW[2] - 1)
        return {"query": make(1, length, height, width, channels), "key": make(1, length, height, width, channels),
                "value": make(1, length, height, width, channels), "rel_pos_bias": make(rows, HEADS, s=0.02)}
    return setup


def _detached(fn):
    return lambda **inputs: fn(**{k: v.detach() for k, v in inputs.items()})


def _floor(direction: str):
    """Bytes moved (benchmarks/bandwidth.py): read q, k, v (L H W C each) and the bias, write L H W C."""
    return lambda query, key, value, rel_pos_bias: compulsory_bytes(
        direction, [query, key, value, rel_pos_bias], query.numel(), [query, key, value, rel_pos_bias], query.dtype)


def cases(device: str, quick: bool, tiny: bool = False) -> list[BenchCase]:
    height, width, channels = TINY if tiny else (HEIGHT, WIDTH, CHANNELS)
    dtypes = [torch.float32] + ([torch.bfloat16] if device == "cuda" else [])
    out = []
    for dtype in dtypes:
        for length in ((5,) if quick else (5, 15)):
            shape = f"B=1 L={length} {height}x{width} C={channels} h={HEADS} win={WINDOW} shift={SHIFT} bias"
            variants = _variants(device)
            setup = _setup(length, dtype, device, height, width, channels)
            out.append(BenchCase("clip_window_attention", shape, "forward", dtype, device, setup,
                                 {k: _detached(f) for k, f in variants.items()}, compare=_compare,
                                 floor_bytes=_floor("forward")))
            out.append(BenchCase("clip_window_attention", shape, "backward", dtype, device, setup,
                                 {k: backward_only(f, INPUTS) for k, f in variants.items()}, compare=_compare,
                                 floor_bytes=_floor("backward")))
            if not quick:
                out.append(BenchCase("clip_window_attention", shape, "forward+backward", dtype, device, setup,
                                     {k: forward_backward(f, INPUTS) for k, f in variants.items()}, compare=_compare,
                                     floor_bytes=_floor("forward+backward")))
    return out
