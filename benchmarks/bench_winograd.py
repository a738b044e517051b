"""Winograd F(2x2, 3x3) against the direct convolution, compiled on the CPU (vos_models.engine.winograd).

``python -m benchmarks.bench_winograd [--layers] [--steps rgmp,ttvos,crvos] [--precision bfloat16,float32]
[--rounds N] [--quick] [--record]``

Two measurements, both compiled as the engine compiles (``torch.compile(fullgraph=True)``,
Inductor freezing, CPU autocast for bfloat16), both interleaved (each round runs the direct and
the Winograd version once; the median of ``--rounds`` is reported):

* ``--layers``: one 3x3 convolution + bias + residual add + ReLU at the channel counts and
  stride-16/8/4 sizes of a 480p frame (what a ResNet block does), direct against Winograd. This
  is what decided ``MIN_CHANNELS`` (and, with 256 channels at 120 x 216, the bands of
  ``BAND_BYTES``).
* ``--steps``: a method's whole tracking step at 854x480, one object, ``InferenceEngine(...,
  fold_norms=True, compile=True)`` with ``winograd`` off and on (random weights; the max
  |difference| of the probabilities between the two is reported too).

It exists to measure where Winograd pays on a CPU (AVX2, AVX-512, AVX-512-BF16, AMX: the preset
turns it off with AMX until this has been run there). Output: a markdown table (stdout and
``winograd.md``) and CSV rows (``winograd.csv``) in ``benchmarks/runs/`` (git-ignored) or
``benchmarks/results/`` with ``--record``, with machine, commit and torch on every row.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import statistics
import sys

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import record
from benchmarks.harness import interleaved_ms

# (channels, height, width, dilation): the convolutions of TTVOS / CRVOS at 480p (864 x 480 padded)
LAYERS = ((512, 30, 54, 1), (512, 30, 54, 2), (256, 30, 54, 1), (256, 120, 216, 1), (128, 60, 108, 1), (64, 120, 216, 1))
# --quick: two small layers, odd sizes, both dilations (a smoke run: seconds, mostly compiles)
QUICK_LAYERS = ((16, 9, 13, 1), (16, 9, 13, 2))
COLUMNS = ["timestamp", "machine", "commit", "torch", "what", "precision", "direct_ms", "winograd_ms", "speedup",
           "max_abs_diff", "rounds"]


class _Block(nn.Module):
    """relu(conv3x3(x) + residual): one convolution as a ResNet block runs it."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)

    def forward(self, x, residual):
        return F.relu(self.conv(x) + residual)


def _autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16")


def _medians(runs: dict, rounds: int) -> dict:
    """Median ms of each callable over ``rounds`` interleaved rounds (after one untimed round)."""
    times, _ = interleaved_ms(runs, rounds)
    return {key: statistics.median(values) for key, values in times.items()}


def bench_layer(channels: int, height: int, width: int, dilation: int, precision: str, rounds: int) -> dict:
    from torch._inductor import config as inductor_config

    from vos_models.engine import winograd

    block = _Block(channels, dilation).eval()
    converted = copy.deepcopy(block)
    converted.conv = winograd.WinogradConv2d(block.conv)  # at any width: the threshold is what is measured
    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
    x = torch.randn(1, channels, height, width).to(dtype).contiguous(memory_format=torch.channels_last)
    residual = torch.randn_like(x)
    runs, outputs = {}, {}
    with torch.no_grad(), _autocast(precision), inductor_config.patch(freezing=True):
        for key, module in (("direct", block), ("winograd", converted)):
            torch._dynamo.reset()  # one graph per layer: dynamo's per-function recompile limit
            compiled = torch.compile(module, fullgraph=True, dynamic=False)
            outputs[key] = compiled(x, residual).float()
            runs[key] = (lambda c: (lambda: c(x, residual)))(compiled)
        medians = _medians(runs, rounds)
    diff = float((outputs["direct"] - outputs["winograd"]).abs().max())
    return {"what": f"conv {channels}->{channels} 3x3 dil {dilation} at {height}x{width} + residual + relu",
            "direct_ms": medians["direct"], "winograd_ms": medians["winograd"], "max_abs_diff": diff}


def bench_step(name: str, precision: str, rounds: int) -> dict:
    from benchmarks.bench_cpu_runtimes import _start
    from benchmarks.cpu_runtime_child import ours_step
    from vos_models.engine.inference import InferenceEngine
    from vos_models.registry import build_method

    torch.manual_seed(0)
    method = build_method(name).eval()
    state, frame = _start(method, 480, 854, 1)
    runs, outputs, converted = {}, {}, 0
    for key, flag in (("direct", False), ("winograd", True)):
        torch._dynamo.reset()
        engine = InferenceEngine(copy.deepcopy(method), precision=precision, fold_norms=True, compile=True,
                                 winograd=flag)
        converted = max(converted, len(engine.winograd_layers))
        runs[key] = (lambda e: (lambda: ours_step(e, state, frame)))(engine)
        outputs[key] = runs[key]().float()  # compiles
    medians = _medians(runs, rounds)
    diff = float((outputs["direct"] - outputs["winograd"]).abs().max())
    return {"what": f"{name} tracking step 854x480, 1 object ({converted} layers converted)",
            "direct_ms": medians["direct"], "winograd_ms": medians["winograd"], "max_abs_diff": diff}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", action="store_true", help="single convolutions at the methods' sizes")
    parser.add_argument("--steps", default="", help="methods whose tracking step to time, e.g. ttvos,crvos")
    parser.add_argument("--precision", default="bfloat16,float32", help="comma-separated: bfloat16, float32")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="--layers on two small layers, 2 rounds: a smoke run")
    parser.add_argument("--record", action="store_true", help="write to benchmarks/results/ (tracked)")
    args = parser.parse_args(argv)
    if args.quick:
        args.layers, args.rounds = True, min(args.rounds, 2)
    if not args.layers and not args.steps:
        parser.error("give --layers and/or --steps METHODS (or --quick)")
    from vos_models.engine.presets import cpu_has_fast_bfloat16

    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    if "bfloat16" in precisions and not cpu_has_fast_bfloat16():
        print("bench_winograd: no native bfloat16 on this CPU: bfloat16 skipped", file=sys.stderr)
        precisions.remove("bfloat16")
    env = record.environment("cpu")
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    rows = []
    for precision in precisions:
        jobs = [(bench_layer, layer) for layer in (QUICK_LAYERS if args.quick else LAYERS)] if args.layers else []
        jobs += [(bench_step, (name,)) for name in args.steps.split(",") if name]
        for bench, params in jobs:
            row = bench(*params, precision, args.rounds)
            row.update(precision=precision, speedup=row["direct_ms"] / row["winograd_ms"], rounds=args.rounds)
            print(f"  {row['what']} {precision}: direct {row['direct_ms']:.2f} ms, Winograd {row['winograd_ms']:.2f} ms "
                  f"({row['speedup']:.2f}x), max |diff| {row['max_abs_diff']:.2g}", file=sys.stderr, flush=True)
            rows.append(row)
    header = (f"# Winograd F(2x2,3x3) vs direct 3x3 convolution, compiled, CPU: {env['machine']}, "
              f"{torch.get_num_threads()} threads, torch {env['torch']}, commit {env['commit']}, "
              f"capability {torch.backends.cpu.get_cpu_capability()}, median of {args.rounds} interleaved rounds")
    lines = ["| what | precision | direct ms | Winograd ms | speedup | max abs diff |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['what']} | {r['precision']} | {r['direct_ms']:.2f} | {r['winograd_ms']:.2f} | "
              f"{r['speedup']:.2f}x | {r['max_abs_diff']:.2g} |" for r in rows]
    markdown = header + "\n\n" + "\n".join(lines) + "\n"
    print(markdown)
    folder = record.RESULTS_DIR if args.record else record.SCRATCH_DIR
    folder.mkdir(parents=True, exist_ok=True)
    record.append_csv(folder / "winograd.csv",
                      [{"timestamp": now, "machine": env["machine"], "commit": env["commit"], "torch": env["torch"],
                        **{k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()}} for r in rows],
                      COLUMNS)
    from vos_models.atomic import write_text

    write_text(folder / "winograd.md", markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
