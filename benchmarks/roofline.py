"""The H200 roofline of every vos_kernels op: bytes that must move, FLOPs, floor times, targets.

One source of truth for docs/gpu.md (``python -m benchmarks.roofline --markdown`` prints the
table the doc holds; tests/test_gpu_check.py checks that they match) and for the GPU check's
comparison of measured kernel times with the floors (``compare_rows``).

Machine (issue 15): HBM3e at ``HBM_BYTES_PER_S`` = 4.8 TB/s; dense bf16/fp16 tensor-core peak
989 TFLOPS; fp32 (non-tensor-core FMA) peak 67 TFLOPS. For one call of an op with ``bytes`` of
compulsory traffic (every input read once, every output written once, at the tensor's dtype
size s) and ``flops`` multiply-adds x 2:

    memory floor  t_mem  = bytes / 4.8e12 s
    compute floor t_comp = flops / peak(dtype) s
    floor = max(t_mem, t_comp)

Targets: a bandwidth-bound op must reach >= 70 % of the memory floor (time <= t_mem / 0.7,
issue 15). A matmul-bound op must reach the fraction f = ``COMPUTE_TARGET[op]`` of the compute
floor (time <= t_comp / f), chosen per op from what its GEMMs can feed the tensor cores with
(the reasons are beside each value). An op is matmul-bound when t_comp / f > t_mem / 0.7, i.e.
when its GEMMs at their reachable rate take longer than its traffic at the reachable bandwidth;
the target is then the larger of the two times. Exps, compares and the top-k selection are not counted as
FLOPs: they are the reason the compute fractions are below what a plain GEMM reaches.

Shapes are parsed from the benchmark suites' shape texts (``B=1 O=5 480x854``,
``T=20 N=1620 Ck=64 Cv=512 k=20 O=1``, ...), so every row a suite records can be compared.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import inspect
import math
import re
import sys
from pathlib import Path

HBM_BYTES_PER_S = 4.8e12
PEAK_FLOPS = {"float32": 67e12, "bfloat16": 989e12, "float16": 989e12}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}
MEMORY_TARGET = 0.70
#: The fraction of the compute floor a matmul-bound op must reach, (bf16/fp16, fp32).
COMPUTE_TARGET = {
    # One (Nt x P) @ (P x Ct) product per object with Nt = Ct = 128 and P = 6480: a single 128 x 128
    # output tile, so the K = P loop must be split over the SMs (split-K) and reduced; cuBLAS
    # reaches ~40-60 % of peak on such skinny, K-long GEMMs. Target 30 % (bf16), 50 % (fp32 FMA).
    "template_update": (0.30, 0.50),
    # Flash-style dense read: FlashAttention-2 reaches ~35-50 % of the H100 bf16 peak at head dim
    # 64 forward; the value width (512 x O) makes the PV product dominant and tensor-core friendly.
    "memory_read dense": (0.35, 0.50),
    # Top-k read: the affinity GEMM (Ck = 64) streams every score through a per-query top-20
    # selection (compares and shuffles on the CUDA cores, not the tensor cores), so the GEMM's
    # tensor cores idle while it runs: 20 % (bf16), 40 % (fp32).
    "memory_read top-k": (0.20, 0.40),
    # 3-D windows of at most 98 tokens: each window's QK^T and PV are <= 98 x 98 x d products
    # (d = 32 per head in the benchmark), too small to keep a warpgroup's MMA pipeline full, plus
    # the gather of the shifted windows: 15 % (bf16), 40 % (fp32).
    "clip_window_attention": (0.15, 0.40),
}
#: One timed call also pays launch and dispatch (Python, the dispatcher, the custom op's checks):
#: ~10-40 us. A floor below this is below what the harness's per-call timing can resolve.
LAUNCH_OVERHEAD_US = 20.0


@dataclasses.dataclass(frozen=True)
class Cost:
    """Compulsory bytes and FLOPs of one call, and which target family applies."""
    bytes: float
    flops: float
    family: str          # key of COMPUTE_TARGET for matmul-bound rows


@dataclasses.dataclass(frozen=True)
class Floor:
    op: str
    shape: str
    direction: str
    dtype: str
    bytes: float
    flops: float
    memory_us: float
    compute_us: float
    bound: str           # "memory" or "compute"
    target_fraction: float
    target_us: float

    @property
    def floor_us(self) -> float:
        return max(self.memory_us, self.compute_us)


# ---------------------------------------------------------------- shapes


def parse_shape(text: str) -> dict:
    """``B=1 O=5 480x854`` -> {"B": 1, "O": 5, "H": 480, "W": 854}; ``win=(2, 7, 7)`` -> tuple;
    the word ``dense`` -> {"dense": True}."""
    params: dict = {"dense": " dense" in f" {text}"}
    for key, value in re.findall(r"(\w+)=(\([^)]*\)|\S+)", text):
        params[key] = (tuple(int(v) for v in value.strip("()").split(",") if v.strip()) if value.startswith("(")
                       else int(value))
    size = re.search(r"(?<![\w=])(\d+)x(\d+)", text)
    if size:
        params["H"], params["W"] = int(size.group(1)), int(size.group(2))
    return params


def window_segments(size: int, window: int, shift: int) -> list[int]:
    """Lengths of the contract's (partial) windows along one axis: with a shift s > 0 the first
    window holds s positions (Video Swin's cyclic shift, without its padding tokens), then full
    windows, then the remainder. ``window_segments(5, 2, 1) == [1, 2, 2]``."""
    if size <= 0:
        return []
    first = shift if shift else window
    out = [min(first, size)]
    while sum(out) < size:
        out.append(min(window, size - sum(out)))
    return out


def window_pairs(dims: tuple[int, int, int], window: tuple[int, int, int], shift: tuple[int, int, int]) -> int:
    """Sum over the windows of (tokens per window)^2: the number of query-key pairs."""
    per_axis = [sum(n * n for n in window_segments(d, w, s)) for d, w, s in zip(dims, window, shift)]
    return math.prod(per_axis)


# ---------------------------------------------------------------- costs per op


def _aggregation_planes(op: str, objects: int, direction: str) -> int:
    """Full-resolution planes moved: soft_aggregate reads O, writes O + 1 (backward: reads
    grad_out O + 1 and prob O, writes O); min_background_aggregate reads the 2 O planes of q,
    writes O + 1 (backward: reads O + 1 and 2 O, writes 2 O)."""
    o = objects
    forward, backward = ((2 * o + 1, 3 * o + 1) if op == "soft_aggregate" else (3 * o + 1, 5 * o + 1))
    return {"forward": forward, "backward": backward, "forward+backward": forward + backward}[direction]


def cost(op: str, params: dict, direction: str, dtype: str) -> Cost:
    """Bytes and FLOPs of one call of ``op`` with the parsed shape ``params``."""
    s = DTYPE_BYTES[dtype]
    if op in ("soft_aggregate", "min_background_aggregate"):
        pixels = params.get("B", 1) * params["H"] * params["W"]
        planes = _aggregation_planes(op, params["O"], direction)
        # ~6 FLOPs per plane element (clamp, two divisions, a sum); never the bound.
        return Cost(planes * pixels * s, 6.0 * planes * pixels, op)
    if op == "memory_read":
        n = params["N"] * params.get("L", 1)
        m = params["T"] * params["N"] if "M" not in params else params["M"]
        ck, cv, b = params["Ck"], params["Cv"], params.get("B", 1)
        tensors = ck * n + ck * m + cv * m + cv * n          # qk, mk, mv read; out written
        if params["dense"]:
            family = "memory_read dense"
            # forward: S = qk^T mk (2 N M Ck), out = mv softmax(S) (2 N M Cv); backward (flash):
            # S again, dP = dO^T mv, dV, dQ, dK: 2 N M (3 Ck + 2 Cv)
            fwd, bwd = 2.0 * n * m * (ck + cv), 2.0 * n * m * (3 * ck + 2 * cv)
            bwd_bytes = 2 * tensors + cv * n                  # + the output for rowsum(dO * O)
        else:
            family = "memory_read top-k"
            k = params["k"]
            # forward: the whole affinity GEMM (2 N M Ck) then a weighted sum of k values per query;
            # backward: only the kept entries (gather / scatter over k), the affinity is not rebuilt
            fwd, bwd = 2.0 * n * m * ck + 2.0 * n * k * cv, 4.0 * n * k * (ck + cv)
            bwd_bytes = 2 * tensors + n * k * 8 / s           # + the saved int32 indices and fp32 weights
        flops = {"forward": fwd, "backward": bwd, "forward+backward": fwd + bwd}[direction]
        moved = {"forward": tensors, "backward": bwd_bytes, "forward+backward": tensors + bwd_bytes}[direction]
        return Cost(b * moved * s, b * flops, family)
    if op == "template_update":
        b, nt, ct, p = params["B"], params["Nt"], params["Ct"], params["P"]
        forward_bytes = nt * p + ct * p + 2 * nt * ct + 1      # key, value, template in and out, weight
        backward_bytes = 2 * (nt * p + ct * p) + 4 * nt * ct   # read key, value; write their grads
        fwd, bwd = 2.0 * nt * ct * p, 4.0 * nt * ct * p        # key @ value^T; dS @ value, dS^T @ key
        flops = {"forward": fwd, "backward": bwd, "forward+backward": fwd + bwd}[direction]
        moved = {"forward": forward_bytes, "backward": backward_bytes,
                 "forward+backward": forward_bytes + backward_bytes}[direction]
        return Cost(b * moved * s, b * flops, op)
    if op == "clip_window_attention":
        b, length, h, w = params.get("B", 1), params["L"], params["H"], params["W"]
        ck = params["C"]
        cv = params.get("Cv", ck)
        pairs = window_pairs((length, h, w), params["win"], params["shift"])
        tokens = b * length * h * w
        # Summed over heads, the per-window products cost 2 n^2 (Ck + Cv) forward and
        # 2 n^2 (3 Ck + 2 Cv) backward (S recomputed, dP, dV, dQ, dK).
        fwd, bwd = 2.0 * b * pairs * (ck + cv), 2.0 * b * pairs * (3 * ck + 2 * cv)
        forward_bytes = tokens * (2 * ck + 2 * cv)               # q, k, v in; out
        backward_bytes = tokens * (4 * ck + 4 * cv)              # q, k, v, out, dO in; dq, dk, dv out
        flops = {"forward": fwd, "backward": bwd, "forward+backward": fwd + bwd}[direction]
        moved = {"forward": forward_bytes, "backward": backward_bytes,
                 "forward+backward": forward_bytes + backward_bytes}[direction]
        return Cost(moved * s, flops, op)
    raise KeyError(f"roofline: no cost model for op {op!r}")


def floor(op: str, shape: str, direction: str, dtype: str) -> Floor:
    """The H200 floor and target of one call; ``shape`` is a benchmark suite's shape text."""
    c = cost(op, parse_shape(shape), direction, dtype)
    memory_us = c.bytes / HBM_BYTES_PER_S * 1e6
    compute_us = c.flops / PEAK_FLOPS[dtype] * 1e6
    bound, fraction, target = "memory", MEMORY_TARGET, memory_us / MEMORY_TARGET
    if c.family in COMPUTE_TARGET:
        low, fp32 = COMPUTE_TARGET[c.family]
        compute_fraction = fp32 if dtype == "float32" else low
        if compute_us / compute_fraction > target:   # the GEMMs, at their reachable rate, take longer
            bound, fraction, target = "compute", compute_fraction, compute_us / compute_fraction
    return Floor(op, shape, direction, dtype, c.bytes, c.flops, memory_us, compute_us, bound, fraction, target)


# ---------------------------------------------------------------- the tables


#: The kernel benchmark cases the GPU check runs (``benchmarks.run --quick --device cuda``),
#: as (op, shape text, directions); the shape texts are the suites' own.
BENCHMARK_ROWS = [
    ("soft_aggregate", "B=1 O=5 480x854", ("forward", "backward")),
    ("min_background_aggregate", "B=1 O=1 480x854", ("forward", "backward")),
    ("min_background_aggregate", "B=1 O=5 480x854", ("forward", "backward")),
    ("memory_read", "T=1 N=1620 Ck=64 Cv=512 k=20 O=1", ("forward", "backward")),
    ("memory_read", "T=20 N=1620 Ck=64 Cv=512 k=20 O=1", ("forward", "backward")),
    ("memory_read", "T=1 N=1620 Ck=64 Cv=512 dense O=1", ("forward", "backward")),
    ("memory_read", "T=20 N=1620 Ck=64 Cv=512 dense O=1", ("forward",)),
    ("template_update", "B=4 Nt=128 Ct=128 P=6480", ("forward", "forward+backward")),
    ("clip_window_attention", "B=1 L=5 30x54 C=256 h=8 win=(2, 7, 7) shift=(1, 3, 3) bias", ("forward", "backward")),
]


def _defaults(cls) -> dict:
    return {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def model_rows(height: int = 480, width: int = 854) -> list[tuple[str, str, str, str, float]]:
    """The per-frame fused ops of TTVOS and PCVOS at ``height`` x ``width`` with one object:
    (label, op, shape text, direction, calls per frame), shapes from the methods' default configs.

    Both methods pad frames to multiples of 16. TTVOS: the template (C8 x C8, C8 = its
    backbone's stride-8 width) is rebuilt over the h8 w8 positions once per frame, the objects'
    softmaxes aggregated at the frame size. PCVOS (clip length L, memory bank at the benchmark's
    mid-video size and at its cap): one top-k read per clip for the L h16 w16 queries; the
    intra-clip refinement pads the clip to multiples of its window and runs one window attention
    per block (shift 0, then window // 2); one soft aggregation per clip at the padded size."""
    from benchmarks.bench_models import PCVOS_MEMORY_FRAMES
    from vos_models.backbones.resnet import ResNet
    from vos_models.methods.pcvos.method import PCVOS
    from vos_models.methods.ttvos.method import TTVOS

    ph, pw = -(-height // 16) * 16, -(-width // 16) * 16
    tt = _defaults(TTVOS)
    c8 = ResNet(tt["backbone"], num_stages=2).feature_channels["layer2"]
    rows = [("TTVOS", "template_update", f"B=1 Nt={c8} Ct={c8} P={(ph // 8) * (pw // 8)}", "forward", 1.0),
            ("TTVOS", "min_background_aggregate", f"B=1 O=1 {height}x{width}", "forward", 1.0)]
    pc = _defaults(PCVOS)
    length, n = pc["clip_length"], (ph // 16) * (pw // 16)
    for frames in (PCVOS_MEMORY_FRAMES, pc["max_memory_frames"]):
        rows.append((f"PCVOS (bank {frames} frames)", "memory_read",
                     f"T={frames} N={n} L={length} Ck={pc['key_dim']} Cv={pc['value_dim']} k={pc['top_k']} O=1",
                     "forward", 1.0 / length))
    window = tuple(pc["icr_window"])
    grid = [-(-d // w) * w for d, w in zip((length, ph // 16, pw // 16), window)]
    for block in range(pc["icr_depth"]):
        shift = (0, 0, 0) if block % 2 == 0 else tuple(w // 2 for w in window)
        rows.append((f"PCVOS (ICR block {block + 1})", "clip_window_attention",
                     f"B=1 L={grid[0]} {grid[1]}x{grid[2]} C={pc['icr_dim']} Cv={pc['value_dim']} "
                     f"h={pc['icr_heads']} win={window} shift={shift}", "forward", 1.0 / length))
    rows.append(("PCVOS", "soft_aggregate", f"B={length} O=1 {ph}x{pw}", "forward", 1.0 / length))
    return rows


def _us(x: float) -> str:
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _bound(f: Floor) -> str:
    return f"{f.bound}, {f.target_fraction:.0%}"


def markdown() -> str:
    """The two tables of docs/gpu.md: benchmark shapes, and the models' per-frame ops."""
    head = ("| op | shape | direction | MB moved (fp32 / bf16) | GFLOP | floor fp32 us (mem / comp) | "
            "target fp32 us (bound, fraction) | floor bf16 us (mem / comp) | target bf16 us (bound, fraction) |\n"
            "|---|---|---|---|---|---|---|---|---|")
    lines = ["### Kernel benchmark shapes", "", head]
    for op, shape, directions in BENCHMARK_ROWS:
        for direction in directions:
            f32, b16 = floor(op, shape, direction, "float32"), floor(op, shape, direction, "bfloat16")
            lines.append(f"| {op} | {shape} | {direction} | {f32.bytes / 1e6:.1f} / {b16.bytes / 1e6:.1f} | "
                         f"{f32.flops / 1e9:.3f} | {_us(f32.memory_us)} / {_us(f32.compute_us)} | "
                         f"{_us(f32.target_us)} ({_bound(f32)}) | {_us(b16.memory_us)} / {_us(b16.compute_us)} | "
                         f"{_us(b16.target_us)} ({_bound(b16)}) |")
    lines += ["", "### Per-frame ops of TTVOS and PCVOS at 854x480, one object", "",
              "| method | op | shape (one call) | calls per frame | MB moved per frame (fp32 / bf16) | "
              "GFLOP per frame | floor per frame fp32 / bf16 us | target per frame fp32 / bf16 us | "
              "bound (fp32 / bf16) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for label, op, shape, direction, per_frame in model_rows():
        f32, b16 = floor(op, shape, direction, "float32"), floor(op, shape, direction, "bfloat16")
        lines.append(f"| {label} | {op} | {shape} | {per_frame:g} | {f32.bytes * per_frame / 1e6:.1f} / "
                     f"{b16.bytes * per_frame / 1e6:.1f} | {f32.flops * per_frame / 1e9:.3f} | "
                     f"{_us(f32.floor_us * per_frame)} / {_us(b16.floor_us * per_frame)} | "
                     f"{_us(f32.target_us * per_frame)} / {_us(b16.target_us * per_frame)} | {f32.bound} / {b16.bound} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- comparison with measurements


COMPARISON_FIELDS = ["op", "shape", "direction", "dtype", "variant", "measured_us", "floor_us", "bound",
                     "target_us", "target_fraction", "attained_fraction", "verdict", "note"]


def compare_rows(rows: list[dict]) -> list[dict]:
    """Benchmark CSV rows (benchmarks/record.py columns) -> one comparison row per fused variant.

    attained_fraction = floor / measured (1.0 = at the floor); verdict "meets" when the measured
    median is within the target time, "misses" when not, "no time" when the variant failed."""
    out = []
    for row in rows:
        if not row["variant"].startswith("fused") or row["dtype"] not in PEAK_FLOPS:
            continue
        try:
            f = floor(row["op"], row["shape"], row["direction"], row["dtype"])
        except (KeyError, ValueError) as exc:
            raise ValueError(f"roofline: cannot model {row['op']} {row['shape']!r} {row['direction']}: {exc}") from exc
        measured = float(row["median_ms"]) * 1e3 if row["median_ms"] not in ("", "-") else float("nan")
        verdict = ("skipped" if row.get("error", "").startswith("skipped:") else "no time" if math.isnan(measured)
                   else "meets" if measured <= f.target_us else "misses")
        note = (f"floor below the ~{LAUNCH_OVERHEAD_US:.0f} us launch and dispatch cost of one timed call"
                if f.floor_us < LAUNCH_OVERHEAD_US else "")
        out.append({"op": f.op, "shape": f.shape, "direction": f.direction, "dtype": f.dtype, "variant": row["variant"],
                    "measured_us": f"{measured:.2f}", "floor_us": f"{f.floor_us:.2f}", "bound": f.bound,
                    "target_us": f"{f.target_us:.2f}", "target_fraction": f"{f.target_fraction:.2f}",
                    "attained_fraction": f"{f.floor_us / measured:.3f}" if measured > 0 else "nan",
                    "verdict": verdict, "note": note})
    return out


def read_rows(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            rows.extend(csv.DictReader(f))
    return rows


DOC_BEGIN, DOC_END = "<!-- roofline:begin (python -m benchmarks.roofline --update-doc) -->", "<!-- roofline:end -->"


def doc_block(text: str) -> str:
    """The generated part of a document: the text between DOC_BEGIN and DOC_END."""
    begin, end = text.index(DOC_BEGIN) + len(DOC_BEGIN), text.index(DOC_END)
    return text[begin:end].strip("\n")


def update_doc(path: Path) -> None:
    """Replace the block between the roofline markers of `path` with `markdown()`."""
    text = path.read_text()
    begin, end = text.index(DOC_BEGIN) + len(DOC_BEGIN), text.index(DOC_END)
    path.write_text(text[:begin] + "\n" + markdown() + "\n" + text[end:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markdown", action="store_true", help="print the roofline tables of docs/gpu.md")
    parser.add_argument("--update-doc", type=Path, metavar="MD",
                        help="rewrite the roofline block of this document (docs/gpu.md)")
    parser.add_argument("--compare", nargs="+", type=Path, metavar="CSV",
                        help="benchmark CSVs to compare with the floors (writes --output)")
    parser.add_argument("--output", type=Path, help="comparison CSV to write (with --compare)")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown())
    if args.update_doc:
        update_doc(args.update_doc)
    if args.compare:
        compared = compare_rows(read_rows(args.compare))
        target = open(args.output, "w", newline="") if args.output else sys.stdout
        writer = csv.DictWriter(target, fieldnames=COMPARISON_FIELDS)
        writer.writeheader()
        writer.writerows(compared)
        if args.output:
            target.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
