"""Memory on long videos: a synthetic video streamed through a method, memory sampled as it goes.

    python -m benchmarks.long_video --method pcvos --frames 1000 --height 480 --width 854
    python -m benchmarks.long_video --method ttvos --frames 1000 --set backbone=resnet50

Frames are drawn on the fly (a fixed textured background and moving ellipses, one per object),
never held: the video costs no memory of its own. Every ``--sample-every`` frames the process's
resident set (CPU: VmRSS, and the peak VmHWM; glibc is told to map every buffer over 128 KB on
its own, see ``harness.malloc_mode``, so that freed memory cannot hide growth) or, on CUDA, ``torch.cuda.memory_allocated`` and
the peak since the last sample are recorded with the seconds per frame. Memory is *flat* when,
after the warm-up, neither the resident set nor its peak (CUDA: allocated and peak) rises more
than ``--tolerance-mb`` above its value at the end of the warm-up. The warm-up covers the
method's own growth to its caps (PCVOS: its memory bank fills at ``max_memory_frames`` written
frames, one per clip, so the default warm-up is long enough for that).

Writes ``benchmarks/results/long_video_<method>_<H>p.csv`` and ``.png`` (each to a temporary name,
then renamed) and prints a one-line verdict. Exit status: 0 flat, 1 memory grew (or a bad
argument), 2 malformed command line.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from benchmarks.harness import malloc_mode

RESULTS_DIR = Path(__file__).resolve().parent / "results"
FIELDS = ["frame", "seconds", "s_per_frame", "rss_mb", "peak_rss_mb", "cuda_allocated_mb", "cuda_peak_mb"]


def synthetic_frames(frames: int, height: int, width: int, objects: int, seed: int = 0
                     ) -> tuple[Iterator[tuple[str, np.ndarray]], np.ndarray]:
    """A generator of (name, (H, W, 3) uint8) frames and the first frame's (H, W) labels.

    Object k is an ellipse of its own colour moving on a Lissajous path; later objects are
    drawn over earlier ones (so they occlude them, as in real videos)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 16 + 2, width // 16 + 2, 3), dtype=np.uint8)
    background = np.repeat(np.repeat(coarse, 16, 0), 16, 1)[:height, :width]
    params = [(rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.15), rng.uniform(0.05, 0.15),
               rng.uniform(0.01, 0.05), rng.uniform(0.01, 0.05), rng.integers(0, 256, 3, dtype=np.uint8))
              for _ in range(objects)]
    rows, cols = np.ogrid[:height, :width]

    def draw(t: int) -> tuple[np.ndarray, np.ndarray]:
        image, labels = background.copy(), np.zeros((height, width), np.uint8)
        for k, (cy, cx, ry, rx, wy, wx, colour) in enumerate(params, start=1):
            y = (cy + 0.15 * np.sin(wy * t)) * height
            x = (cx + 0.15 * np.cos(wx * t)) * width
            inside = ((rows - y) / (ry * height)) ** 2 + ((cols - x) / (rx * width)) ** 2 <= 1
            image[inside] = colour
            labels[inside] = k
        return image, labels

    def stream():
        for t in range(frames):
            yield f"{t:05d}", draw(t)[0]

    return stream(), draw(0)[1]


def _status_mb(field_name: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name):
                return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class LongVideoResult:
    samples: list[dict] = field(default_factory=list)
    warmup: int = 0
    tolerance_mb: float = 0.0
    growth_mb: dict = field(default_factory=dict)

    @property
    def flat(self) -> bool:
        return all(v <= self.tolerance_mb for v in self.growth_mb.values())


def run_long_video(method, *, frames: int, height: int, width: int, objects: int = 1, device: str = "cpu",
                   precision: str = "float32", sample_every: int = 10, warmup: int | None = None,
                   tolerance_mb: float = 64.0, progress: bool = False, **engine_options) -> LongVideoResult:
    """Segment a streamed synthetic video; memory samples and the growth after the warm-up."""
    from vos_models.engine.inference import InferenceEngine

    if warmup is None:
        warmup = default_warmup(method, frames)
    if not 0 <= warmup < frames:
        raise ValueError(f"warm-up must be in [0, frames={frames}), got {warmup}; give more --frames")
    if sample_every < 1:
        raise ValueError(f"--sample-every must be >= 1, got {sample_every}")
    engine = InferenceEngine(method, device=device, precision=precision, **engine_options)
    cuda = engine.device.type == "cuda"
    if not cuda:
        # Every buffer over 128 KB its own mapping, returned when freed: the resident set then
        # follows the live memory instead of hiding growth in heap space freed earlier.
        malloc_mode("memory")
    try:
        result = _sample(engine, frames, height, width, objects, sample_every, warmup, tolerance_mb, progress)
    finally:
        if not cuda:
            malloc_mode("timing")
    return result


def _sample(engine, frames, height, width, objects, sample_every, warmup, tolerance_mb, progress) -> LongVideoResult:
    cuda = engine.device.type == "cuda"
    video, labels = synthetic_frames(frames, height, width, objects)
    result = LongVideoResult(warmup=warmup, tolerance_mb=tolerance_mb)
    start = last_time = time.perf_counter()
    last_frame = 0
    if cuda:
        torch.cuda.reset_peak_memory_stats(engine.device)
    for index, _ in enumerate(engine.segment(video, {"00000": labels}, progress=progress, total=frames), start=1):
        if index % sample_every and index != frames:
            continue
        now = time.perf_counter()
        sample = {"frame": index, "seconds": now - start, "s_per_frame": (now - last_time) / (index - last_frame),
                  "rss_mb": _status_mb("VmRSS"), "peak_rss_mb": _status_mb("VmHWM"),
                  "cuda_allocated_mb": float("nan"), "cuda_peak_mb": float("nan")}
        if cuda:
            sample["cuda_allocated_mb"] = torch.cuda.memory_allocated(engine.device) / 2**20
            sample["cuda_peak_mb"] = torch.cuda.max_memory_allocated(engine.device) / 2**20
            torch.cuda.reset_peak_memory_stats(engine.device)
        result.samples.append(sample)
        last_time, last_frame = now, index
    keys = ("cuda_allocated_mb", "cuda_peak_mb") if cuda else ("rss_mb", "peak_rss_mb")
    base = [s for s in result.samples if s["frame"] <= warmup]
    after = [s for s in result.samples if s["frame"] > warmup]
    if base and after:
        result.growth_mb = {k: max(s[k] for s in after) - base[-1][k] for k in keys}
    return result


def default_warmup(method, frames: int) -> int:
    """A tenth of the video, and for a capped memory bank the frames it takes to fill it."""
    warmup = frames // 10
    cap = getattr(method, "max_memory_frames", None)
    if cap:
        every = getattr(method, "mem_every", None) or getattr(method, "clip_length", 1)
        warmup = max(warmup, (cap + 2) * every)
    return warmup


def write_outputs(result: LongVideoResult, stem: Path, title: str) -> tuple[Path, Path | None]:
    """CSV and chart, each written to a temporary name then renamed (no half-written files); the
    chart is None where matplotlib is not installed."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = stem.with_suffix(".csv"), stem.with_suffix(".png")
    tmp = csv_path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for s in result.samples:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in s.items()})
    os.replace(tmp, csv_path)

    try:
        import matplotlib
    except ImportError:
        print(f"long_video: chart {png_path.name} not drawn: matplotlib is not installed", flush=True)
        return csv_path, None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = [s["frame"] for s in result.samples]
    fig, (mem, speed) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for key in ("rss_mb", "peak_rss_mb", "cuda_allocated_mb", "cuda_peak_mb"):
        values = [s[key] for s in result.samples]
        if not all(np.isnan(values)):
            mem.plot(frames, values, label=key)
    mem.axvline(result.warmup, color="grey", linestyle="--", label="end of warm-up")
    mem.set_ylabel("MB")
    mem.legend(fontsize=7)
    mem.set_title(title, fontsize=9)
    speed.plot(frames, [s["s_per_frame"] for s in result.samples])
    speed.set_ylabel("s / frame")
    speed.set_xlabel("frame")
    fig.tight_layout()
    tmp_png = png_path.with_suffix(".tmp.png")
    fig.savefig(tmp_png, dpi=100)
    plt.close(fig)
    os.replace(tmp_png, png_path)
    return csv_path, png_path


def main(argv: list[str] | None = None) -> int:
    from vos_models.cli.common import parse_set_options
    from vos_models.registry import build_method

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", required=True)
    parser.add_argument("--set", dest="set_options", action="append", metavar="KEY=VALUE",
                        help="method config, repeatable (e.g. --set max_memory_frames=20)")
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=854)
    parser.add_argument("--objects", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--channels-last", action="store_true", help="run the convolutions channels-last")
    parser.add_argument("--sample-every", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=None, help="frames before memory must stay flat "
                        "(default: a tenth of the video, at least the frames that fill a capped memory bank)")
    parser.add_argument("--tolerance-mb", type=float, default=64.0, help="allowed growth after the warm-up (MB)")
    parser.add_argument("--output", type=Path, default=None,
                        help="folder of the CSV and chart (default: benchmarks/runs, git-ignored; "
                             "benchmarks/results with --record)")
    parser.add_argument("--record", action="store_true", help="write to the tracked benchmarks/results/")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.output is None:
        args.output = RESULTS_DIR if args.record else RESULTS_DIR.parent / "runs"
    try:
        torch.manual_seed(0)
        method = build_method(args.method, **parse_set_options(args.set_options))
        result = run_long_video(method, frames=args.frames, height=args.height, width=args.width,
                                objects=args.objects, device=args.device, precision=args.precision,
                                sample_every=args.sample_every, warmup=args.warmup, tolerance_mb=args.tolerance_mb,
                                progress=not args.no_progress, threads=args.threads,
                                channels_last=args.channels_last)
    except (ValueError, RuntimeError) as exc:
        print(f"long_video: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    stem = args.output / f"long_video_{args.method}_{args.height}p"
    last = result.samples[-1]
    title = (f"{args.method}, {args.frames} frames {args.width}x{args.height}, {args.objects} object(s), {args.device}, "
             f"{torch.get_num_threads()} threads, {args.precision}{', channels-last' if args.channels_last else ''}: "
             f"{last['seconds'] / args.frames:.2f} s/frame")
    csv_path, png_path = write_outputs(result, stem, title)
    growth = ", ".join(f"{k} +{v:.1f} MB" for k, v in result.growth_mb.items()) or "no sample after the warm-up"
    verdict = "flat" if result.flat and result.growth_mb else "GREW"
    print(f"long_video: {args.method}: {verdict} after frame {result.warmup} ({growth}; tolerance "
          f"{args.tolerance_mb:.0f} MB); {last['seconds'] / args.frames:.3f} s/frame; {csv_path}, {png_path}")
    return 0 if verdict == "flat" else 1


if __name__ == "__main__":
    sys.exit(main())
