"""The shapes at which the Triton kernels must compile (and be served on a GPU): the benchmarks'
default shapes and each model's 480p per-frame and training shapes, with the models' real
dimensions read from `vos_models` (default configurations).

Each shape is a `Launch`: an op, a label, and the arguments with which that op calls its Triton
launchers (forward and, where the shape is a training one, backward). `run_launchers` calls the
launchers of `vos_kernels.triton` with uninitialised CPU tensors of those shapes and strides:
used by scripts/gpu_ready/triton_aot.py with Triton's launch replaced by a recorder, so each
launch is bound (signature, constexprs, divisibility) exactly as on a GPU. `shape_kwargs` gives
the keyword form that `vos_kernels._dispatch.would_serve` takes.

480p: frames 480 x 854 padded to multiples of 16 (480 x 864): stride 16 -> 30 x 54 = 1620
positions, stride 8 -> 60 x 108 = 6480.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import torch

H16, W16 = 30, 54                  # 480 x 864 at stride 16
P16, P8 = H16 * W16, 60 * 108      # positions at stride 16 and 8
FULL = (480, 854)                  # aggregation runs at frame resolution
TRAIN_BATCH = 2                    # vos_models.training.TrainConfig.batch_size default


@dataclasses.dataclass(frozen=True)
class Launch:
    """One op call: `op`, a readable `label`, and the problem (a dict of sizes and options)."""
    op: str
    label: str
    problem: tuple            # sorted (name, value) pairs
    backward: bool = False

    @property
    def sizes(self) -> dict:
        return dict(self.problem)


def _launch(op, label, backward=False, **problem) -> Launch:
    return Launch(op, label, tuple(sorted(problem.items())), backward)


@functools.lru_cache(maxsize=1)
def model_dims() -> dict:
    """The four models' dims, read from their default configurations (vos_models.build_method)."""
    from vos_models.methods.pcvos.refinement import _WindowAttention
    from vos_models.methods.ttvos.network import TemplateEncoder
    from vos_models.registry import build_method

    pcvos = build_method("pcvos")
    attn = [m for m in pcvos.modules() if isinstance(m, _WindowAttention)]
    if not attn:
        raise RuntimeError("PCVOS: no window attention module found (use_icr off?)")
    ttvos = build_method("ttvos")
    encoder = next(m for m in ttvos.modules() if isinstance(m, TemplateEncoder))
    net = pcvos.network
    return {
        "pcvos": {
            "key_dim": net.key_proj.key_proj.out_channels, "value_dim": net.key_comp.out_channels,
            "top_k": pcvos.top_k, "train_top_k": pcvos.train_top_k, "max_memory_frames": pcvos.max_memory_frames,
            "clip_length": pcvos.clip_length, "pmm_interval": pcvos.pmm_interval,
            "train_clips": pcvos.train_clips,
            "heads": attn[0].num_heads, "window": tuple(attn[0].window),
            "qk_dim": attn[0].qk.in_features, "v_dim": attn[0].v.in_features,
        },
        "ttvos": {"channels": encoder.key[0].out_channels},
    }


def _window_shift(window):
    return tuple(w // 2 for w in window)


def benchmark_launches() -> list[Launch]:
    """The default shapes of benchmarks/bench_*.py (forward and backward where they time it)."""
    out = []
    for objects in (1, 5, 10):
        out.append(_launch("soft_aggregate", f"bench O={objects}", True, batch=1, objects=objects, pixels=480 * 854))
    for objects in (1, 5):
        out.append(_launch("min_background_aggregate", f"bench O={objects}", True, batch=1, objects=objects,
                           pixels=480 * 854))
    for t in (1, 5, 20, 50):
        for objects in (1, 4):
            common = dict(batch=1, key_dim=64, queries=P16, memory=P16 * t, value_dim=512 * objects)
            out.append(_launch("memory_read", f"bench T={t} O={objects} top-k", t == 5, top_k=20, **common))
            if t <= 20:
                out.append(_launch("memory_read", f"bench T={t} O={objects} dense", t <= 5, top_k=None, **common))
    for b in (1, 4, 16):
        for p in (P8, P16):
            out.append(_launch("template_update", f"bench B={b} P={p}", True, batch=b, nt=128, ct=128, positions=p,
                               template=True))
    for length in (5, 15):
        out.append(_launch("clip_window_attention", f"bench L={length}", True, batch=1, length=length, height=H16,
                           width=W16, channels=256, heads=8, window=(2, 7, 7), shift=(1, 3, 3), bias=True))
    return out


def model_launches() -> list[Launch]:
    """Each model's 480p per-frame (batch 1) and training (batch TRAIN_BATCH) calls."""
    dims = model_dims()
    out = []
    # RGMP (soft aggregation of per-object probabilities at frame resolution), PCVOS too.
    for model in ("rgmp", "pcvos"):
        for objects in (1, 3):
            out.append(_launch("soft_aggregate", f"{model} frame O={objects}", False, batch=1, objects=objects,
                               pixels=math.prod(FULL)))
            out.append(_launch("soft_aggregate", f"{model} train O={objects}", True, batch=TRAIN_BATCH,
                               objects=objects, pixels=math.prod(FULL)))
    # CRVOS and TTVOS: min-background aggregation of per-object two-way softmaxes.
    for model in ("crvos", "ttvos"):
        for objects in (1, 3):
            out.append(_launch("min_background_aggregate", f"{model} frame O={objects}", False, batch=1,
                               objects=objects, pixels=math.prod(FULL)))
            out.append(_launch("min_background_aggregate", f"{model} train O={objects}", True, batch=TRAIN_BATCH,
                               objects=objects, pixels=math.prod(FULL)))
    # TTVOS: template of C8 x C8 from key, value (B, C8, P8); one track per object (batch = objects).
    c8 = dims["ttvos"]["channels"]
    for objects in (1, 3):
        out.append(_launch("template_update", f"ttvos frame O={objects} first", False, batch=objects, nt=c8, ct=c8,
                           positions=P8, template=False))
        out.append(_launch("template_update", f"ttvos frame O={objects} blend", False, batch=objects, nt=c8, ct=c8,
                           positions=P8, template=True))
    out.append(_launch("template_update", "ttvos train", True, batch=TRAIN_BATCH * 3, nt=c8, ct=c8, positions=P8,
                       template=True))
    # PCVOS: memory read of a segment of F query frames against up to max_memory_frames memory frames
    # (+ temporary PMM entries); values of the objects stacked along Cv.
    p = dims["pcvos"]
    ck, cv = p["key_dim"], p["value_dim"]
    segment = p["pmm_interval"] or p["clip_length"]
    for frames in (1, 5, p["max_memory_frames"]):
        for objects in (1, 3):
            out.append(_launch("memory_read", f"pcvos frame T={frames} O={objects}", False, batch=1, key_dim=ck,
                               queries=segment * P16, memory=frames * P16, value_dim=cv * objects, top_k=p["top_k"],
                               capacity=(p["max_memory_frames"] + p["clip_length"]) * P16))
    # training: B clips of n frames read 1..train_clips memory frames, dense unless train_top_k is set
    n = p["clip_length"]
    for frames in range(1, p["train_clips"] + 1):
        out.append(_launch("memory_read", f"pcvos train T={frames}", True, batch=TRAIN_BATCH, key_dim=ck,
                           queries=n * P16, memory=frames * P16, value_dim=cv * 2, top_k=p["train_top_k"]))
    # ICR window attention: q/k widened to the value width (heads of max(dq, dv)), O objects as batch,
    # the clip padded to multiples of the window; L <= wt shrinks the window in time.
    heads, window = p["heads"], p["window"]
    width = max(p["qk_dim"], p["v_dim"])
    hp, wp = -(-H16 // window[1]) * window[1], -(-W16 // window[2]) * window[2]
    for length in sorted({2, n}):
        win = (min(length, window[0]),) + tuple(window[1:])
        lp = -(-length // win[0]) * win[0]
        for shift in ((0, 0, 0), _window_shift(win) if length > window[0] else (0,) + _window_shift(window)[1:]):
            for objects, label, backward in ((1, "frame", False), (3, "frame", False), (TRAIN_BATCH * 2, "train", True)):
                out.append(_launch("clip_window_attention", f"pcvos {label} L={length} O={objects} shift={shift}",
                                   backward, batch=objects, length=lp, height=hp, width=wp, channels=width,
                                   heads=heads, window=win, shift=shift, bias=True))
    return out


def all_launches(quick: bool = False) -> list[Launch]:
    """Every launch; quick: per op, one benchmark and one model shape of each kind (forward only or
    with backward; memory_read: top-k and dense)."""
    launches = benchmark_launches() + model_launches()
    if not quick:
        return launches
    picked, seen = [], set()
    for launch in launches:
        key = (launch.op, launch.label.split()[0], launch.backward, launch.sizes.get("top_k") is None)
        if key not in seen:
            seen.add(key)
            picked.append(launch)
    return picked


def shape_kwargs(launch: Launch, dtype: torch.dtype) -> dict:
    """The keyword arguments of vos_kernels._dispatch.would_serve for this launch."""
    s = launch.sizes
    common = {"dtype": dtype}
    if launch.op == "memory_read":
        return {**common, "key_dim": s["key_dim"], "top_k": s["top_k"]}
    if launch.op == "clip_window_attention":
        return {**common, "window": s["window"], "head_dim": s["channels"] // s["heads"]}
    return common


# --- calling the launchers ----------------------------------------------------------------------
def _empty(*shape, dtype):
    return torch.empty(shape, dtype=dtype)


def run_launchers(launch: Launch, dtype: torch.dtype) -> None:
    """Call the Triton launchers of `launch` on uninitialised CPU tensors (outputs are meaningless:
    with the real launch in place this runs the kernels, so use it only under a recorder)."""
    s = launch.sizes
    if launch.op in ("soft_aggregate", "min_background_aggregate"):
        _aggregate(launch.op, s, dtype, launch.backward)
    elif launch.op == "memory_read":
        _memory_read(s, dtype, launch.backward)
    elif launch.op == "template_update":
        _template_update(s, dtype, launch.backward)
    elif launch.op == "clip_window_attention":
        _window_attention(s, dtype, launch.backward)
    else:
        raise ValueError(f"unknown op {launch.op!r}")


def _aggregate(op, s, dtype, backward):
    from vos_kernels.triton import min_background_aggregate as mba
    from vos_kernels.triton import soft_aggregate as sa
    b, o, n = s["batch"], s["objects"], s["pixels"]
    if op == "soft_aggregate":
        prob = _empty(b, o, n, dtype=dtype)
        sa.soft_aggregate_forward_triton(prob, 1e-7)
        if backward:
            sa.soft_aggregate_backward_triton(_empty(b, o + 1, n, dtype=dtype), prob, 1e-7)
    else:
        q = _empty(b, o, 2, n, dtype=dtype)
        mba.min_background_aggregate_forward_triton(q, 1e-7)
        if backward:
            mba.min_background_aggregate_backward_triton(_empty(b, o + 1, n, dtype=dtype), q, 1e-7)


def _memory_read(s, dtype, backward):
    from vos_kernels.triton import memory_read as mr
    b, ck, n, m, cv, k = s["batch"], s["key_dim"], s["queries"], s["memory"], s["value_dim"], s["top_k"]
    scale = 1 / math.sqrt(ck)
    qk = _empty(b, ck, n, dtype=dtype)
    capacity = s.get("capacity")
    if capacity:   # PCVOS's memory bank: keys and values are slices of (1, C, capacity) buffers
        mk = _empty(b, ck, capacity, dtype=dtype)[:, :, :m]
        mv = _empty(b, cv, capacity, dtype=dtype)[:, :, :m]
    else:
        mk, mv = _empty(b, ck, m, dtype=dtype), _empty(b, cv, m, dtype=dtype)
    if k is not None:
        k = min(k, m)
        mr.memory_read_topk_forward_triton(qk, mk, mv, k, scale)
        if backward:
            mr.memory_read_topk_backward_triton(_empty(b, cv, n, dtype=dtype), qk, mk, mv,
                                                _empty(b, n, k, dtype=torch.long), _empty(b, n, k, dtype=torch.float32),
                                                scale)
    else:
        mr.memory_read_dense_forward_triton(qk, mk, mv, scale)
        if backward:
            mr.memory_read_dense_backward_triton(_empty(b, cv, n, dtype=dtype), qk, mk, mv, _empty(b, cv, n, dtype=dtype),
                                                 _empty(b, n, dtype=torch.float32), scale)


def _template_update(s, dtype, backward):
    from vos_kernels.triton import template_update as tu
    b, nt, ct, p = s["batch"], s["nt"], s["ct"], s["positions"]
    key, value = _empty(b, nt, p, dtype=dtype), _empty(b, ct, p, dtype=dtype)
    template = _empty(b, nt, ct, dtype=dtype) if s["template"] else None
    weight = _empty(b, dtype=dtype) if s["template"] else None
    scale = 1 / math.sqrt(p)
    _, incoming = tu.template_update_forward_triton(key, value, template, weight, scale)
    if backward:
        tu.template_update_backward_triton(_empty(b, nt, ct, dtype=dtype), key, value,
                                           _empty(b, nt, ct, dtype=dtype), template, weight, scale, True, True)


def _window_attention(s, dtype, backward):
    from vos_kernels.triton import clip_window_attention as cwa
    shape = (s["batch"], s["length"], s["height"], s["width"], s["channels"])
    q, k, v = (_empty(*shape, dtype=dtype) for _ in range(3))
    window, heads = s["window"], s["heads"]
    rows = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
    bias = _empty(rows, heads, dtype=torch.float32) if s["bias"] else None
    scale = (s["channels"] // heads) ** -0.5
    cwa.clip_window_attention_forward_triton(q, k, v, bias, heads, list(window), list(s["shift"]), scale)
    if backward:
        cwa.clip_window_attention_backward_triton(_empty(*shape, dtype=dtype), q, k, v, bias, heads, list(window),
                                                  list(s["shift"]), scale)
