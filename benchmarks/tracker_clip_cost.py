"""J&F cost of the Tracker's one-frame clips against clip-wise inference (issue 18).

    python -m benchmarks.tracker_clip_cost --checkpoint /tmp/jf/pcvos_sample.pt --threads 1 \
        [--data ../shared/data/davis-sample] [--sequences blackswan dog chair] [--clip-lengths 5 3] \
        [--short-side 128] [--frames N] [--record]
    python -m benchmarks.tracker_clip_cost --random-weights --set key_backbone='resnet18' ...   # smoke test

For a clip-wise method (PCVOS), ``vos_models.Tracker.step`` returns each frame's labels at
once, so it runs clips of ONE frame: the intra-clip refinement sees one frame. Whole-video
inference (``InferenceEngine`` / ``vos-segment``) runs clips of ``clip_length`` frames. For
every sequence this script runs, with the same weights and the same frames:

- **clip-wise**: ``InferenceEngine(method, clip_length=L).segment(...)`` from the first
  frame's mask, once per ``--clip-lengths`` value (default: the checkpoint's clip length);
- **tracker**: ``Tracker(method).step(frame, mask if first else None)`` frame by frame;
- **tracker, memory every L**: the same with the method's ``mem_every = L``. PCVOS writes the
  last frame of every clip to memory (``mem_every=None``), so the Tracker's one-frame clips also
  write EVERY frame, where clip-wise inference writes every L-th; this third run writes every
  L-th frame too, which splits the difference into the intra-clip part (clip-wise minus this)
  and the memory-schedule part (this minus the plain tracker);

and scores both with the project's evaluator (``vos_models.metrics.evaluate_sequence``, the
code ``vos-evaluate`` runs: J, F, J&F over frames 1..N-2 of each object). ``--short-side N``
resizes frames (bilinear) and the first mask (nearest) so that the short side is N pixels,
for both modes alike; the predicted labels are resized back (nearest) and scored against the
full-resolution ground truth. Without it everything runs at the data's resolution (480p).

The fps of each mode is frames over the wall-clock seconds of the whole sequence (frames
already decoded and resized; the first frame's mask encoding included), after a short
untimed warm-up of both modes.

Writes ``tracker_clip_cost.csv`` (appended, one row per sequence and clip length plus a
``mean`` row, with machine, commit, torch, threads, checkpoint and size) and
``tracker_clip_cost_<full|s<N>>.md`` (the table of this run, per run size) to the git-ignored
``benchmarks/runs/``, or to the tracked ``benchmarks/results/`` with ``--record``. A missing or unreadable
checkpoint ends the run with one line, ``tracker_clip_cost: error: <reason>``, exit 1.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import record
from benchmarks.record import RESULTS_DIR, SCRATCH_DIR, environment
from vos_models.atomic import write_text

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "davis-sample"
NAME = "tracker_clip_cost"
COLUMNS = ["timestamp", "machine", "device_name", "threads", "commit", "torch", "checkpoint", "method", "config",
           "sequence", "frames", "size", "scored_at", "clip_length", "jf_clip", "j_clip", "f_clip", "jf_tracker",
           "j_tracker", "f_tracker", "jf_difference", "jf_tracker_mem_every_l", "fps_clip", "fps_tracker"]


@dataclass
class CostRow:
    """One sequence (or the mean over sequences) at one clip length. ``jf_difference`` is
    clip-wise minus tracker: positive = what the Tracker's one-frame clips cost."""

    sequence: str
    frames: int
    size: str            # the size the method ran at, WxH
    scored_at: str       # the size the scores were computed at, WxH
    clip_length: int
    jf_clip: float
    j_clip: float
    f_clip: float
    jf_tracker: float
    j_tracker: float
    f_tracker: float
    fps_clip: float
    fps_tracker: float
    jf_tracker_mem_every_l: float = float("nan")   # the Tracker with mem_every = clip_length

    @property
    def jf_difference(self) -> float:
        return self.jf_clip - self.jf_tracker


@dataclass
class _Video:
    name: str
    frame_names: list[str]
    frames: list[np.ndarray]          # (h, w, 3) uint8 at the run size
    first_mask: np.ndarray            # (h, w) uint8 ids at the run size
    ground_truth: dict[str, np.ndarray]   # full resolution
    full_size: tuple[int, int]


def _resize_rgb(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear, as the training data loader resizes (``VideoClipDataset``)."""
    t = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def _resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(labels))[None, None].float()
    return F.interpolate(t, size=size, mode="nearest")[0, 0].to(torch.uint8).numpy()


def run_size(full: tuple[int, int], short_side: int | None) -> tuple[int, int]:
    """(h, w) with the short side ``short_side`` (None: unchanged)."""
    if short_side is None:
        return full
    scale = short_side / min(full)
    return max(1, round(full[0] * scale)), max(1, round(full[1] * scale))


def _load_video(layout, sequence: str, short_side: int | None, max_frames: int | None) -> _Video:
    from vos_models.data.errors import DataError

    source = layout.frames(sequence)
    names, frames = [], []
    for name, frame in source:
        if max_frames is not None and len(names) >= max_frames:
            break
        names.append(name)
        frames.append(frame)
    if not names:
        raise DataError(f"{sequence}: no frames")
    truth = layout.read_annotations(sequence)
    missing = [n for n in names if n not in truth]
    if missing:
        raise DataError(f"{sequence}: not fully annotated (no mask for frames {missing[:3]}); "
                        "this benchmark scores every frame")
    ground_truth = {n: truth[n] for n in names}
    full = frames[0].shape[:2]
    size = run_size(full, short_side)
    if size != full:
        frames = [_resize_rgb(f, size) for f in frames]
        first = _resize_labels(ground_truth[names[0]], size)
    else:
        first = ground_truth[names[0]]
    return _Video(sequence, names, frames, first, ground_truth, full)


def _to_full(labels: np.ndarray, full: tuple[int, int]) -> np.ndarray:
    return labels if labels.shape == tuple(full) else _resize_labels(labels, full)


def _clip_wise(method, video: _Video, clip_length: int, threads: int | None, device: str
               ) -> tuple[dict[str, np.ndarray], float]:
    from vos_models.engine.inference import InferenceEngine

    engine = InferenceEngine(method, device=device, clip_length=clip_length, threads=threads)
    start = time.perf_counter()
    results = list(engine.segment(zip(video.frame_names, video.frames), {video.frame_names[0]: video.first_mask}))
    seconds = time.perf_counter() - start
    return {r.name: r.labels for r in results}, len(results) / seconds


def _tracked(method, video: _Video, threads: int | None, device: str, mem_every: int | None = None
             ) -> tuple[dict[str, np.ndarray], float]:
    from vos_models import Tracker

    if mem_every is not None:   # a copy writing memory every `mem_every` frames (the weights are the same)
        method = copy.deepcopy(method)
        method.mem_every = mem_every
    tracker = Tracker(method, device=device, threads=threads)
    labels = {}
    start = time.perf_counter()
    for i, (name, frame) in enumerate(zip(video.frame_names, video.frames)):
        labels[name] = tracker.step(frame, video.first_mask if i == 0 else None)
    seconds = time.perf_counter() - start
    return labels, len(labels) / seconds


def _scores(video: _Video, predictions: dict[str, np.ndarray]):
    from vos_models.metrics import evaluate_sequence

    full = {n: _to_full(p, video.full_size) for n, p in predictions.items()}
    return evaluate_sequence(video.name, video.ground_truth, full, video.frame_names)


def measure(method, data: str | Path, sequences: Sequence[str] | None = None,
            clip_lengths: Sequence[int] | None = None, *, threads: int | None = 1, device: str = "cpu",
            short_side: int | None = None, max_frames: int | None = None, warmup_frames: int = 3,
            log=None) -> list[CostRow]:
    """The three runs (clip-wise, tracker, tracker with memory every L) on each sequence with
    ``method``, the same weights for all; one :class:`CostRow` per
    sequence and clip length, then one ``mean`` row per clip length (J, F, J&F averaged over
    every object of every sequence, as vos-evaluate's global row; fps over all frames).

    sequences: default the split ``val`` of ``ImageSets/2017`` when the data has it, else
    every sequence. clip_lengths: default the method's own. max_frames: only the first N
    frames of each sequence (tests, smoke runs)."""
    from vos_models.data.davis import DavisLayout
    from vos_models.data.errors import DataError
    from vos_models.metrics import EvaluationResult

    if not method.clip_wise:
        raise ValueError(f"tracker_clip_cost: {method.name!r} is frame-wise: the Tracker and the engine run "
                         "it the same way, there is nothing to measure")
    layout = DavisLayout(data)
    if not sequences:
        try:
            sequences = layout.sequences("val")
        except DataError:  # no ImageSets/2017/val.txt: every sequence
            sequences = layout.sequences()
    clip_lengths = list(clip_lengths or [method.clip_length])
    log = log or (lambda text: None)
    rows: list[CostRow] = []
    per_length: dict[int, dict[str, list]] = {L: {"clip": [], "tracker": [], "mem": [], "frames": 0, "clip_s": 0.0,
                                                   "tracker_s": 0.0} for L in clip_lengths}
    warmed = False
    for sequence in sequences:
        video = _load_video(layout, sequence, short_side, max_frames)
        if not warmed and warmup_frames:   # one-time costs (allocator, oneDNN primitives) out of the timings
            short = _Video(video.name, video.frame_names[:warmup_frames], video.frames[:warmup_frames],
                           video.first_mask, {}, video.full_size)
            _clip_wise(method, short, clip_lengths[0], threads, device)
            _tracked(method, short, threads, device)
            warmed = True
        tracked, fps_tracker = _tracked(method, video, threads, device)
        tracker_objects = _scores(video, tracked)
        t = EvaluationResult(tracker_objects).global_scores
        h, w = video.frames[0].shape[:2]
        for L in clip_lengths:
            clipped, fps_clip = _clip_wise(method, video, L, threads, device)
            clip_objects = _scores(video, clipped)
            c = EvaluationResult(clip_objects).global_scores
            mem_objects = _scores(video, _tracked(method, video, threads, device, mem_every=L)[0])
            n = len(video.frame_names)
            row = CostRow(sequence, n, f"{w}x{h}", f"{video.full_size[1]}x{video.full_size[0]}", L,
                          c["J&F-Mean"], c["J-Mean"], c["F-Mean"], t["J&F-Mean"], t["J-Mean"], t["F-Mean"],
                          fps_clip, fps_tracker, EvaluationResult(mem_objects).global_scores["J&F-Mean"])
            rows.append(row)
            acc = per_length[L]
            acc["clip"] += clip_objects
            acc["tracker"] += tracker_objects
            acc["mem"] += mem_objects
            acc["frames"] += n
            acc["clip_s"] += n / fps_clip
            acc["tracker_s"] += n / fps_tracker
            log(f"{sequence} L={L}: J&F clip-wise {row.jf_clip:.3f} ({fps_clip:.2f} fps), "
                f"tracker {row.jf_tracker:.3f} ({fps_tracker:.2f} fps), difference {row.jf_difference:+.3f}; "
                f"tracker with memory every {L} frames {row.jf_tracker_mem_every_l:.3f}")
    for L in clip_lengths:
        acc = per_length[L]
        if not acc["frames"]:
            continue
        c, t = EvaluationResult(acc["clip"]).global_scores, EvaluationResult(acc["tracker"]).global_scores
        rows.append(CostRow("mean", acc["frames"], "", "", L, c["J&F-Mean"], c["J-Mean"], c["F-Mean"],
                            t["J&F-Mean"], t["J-Mean"], t["F-Mean"], acc["frames"] / acc["clip_s"],
                            acc["frames"] / acc["tracker_s"], EvaluationResult(acc["mem"]).global_scores["J&F-Mean"]))
    return rows


def markdown(rows: Sequence[CostRow]) -> str:
    lines = ["| sequence | frames | run size | clip length | J&F clip-wise | J&F tracker | difference "
             "(clip-wise - tracker) | J&F tracker, memory every L | J clip / tracker | F clip / tracker | "
             "fps clip-wise | fps tracker |",
             "|---|---:|---|---:|---:|---:|---:|---:|---|---|---:|---:|"]
    for r in rows:
        bold = "**" if r.sequence == "mean" else ""
        lines.append(f"| {bold}{r.sequence}{bold} | {r.frames} | {r.size or '-'} | {r.clip_length} | "
                     f"{bold}{r.jf_clip:.3f}{bold} | {bold}{r.jf_tracker:.3f}{bold} | "
                     f"{bold}{r.jf_difference:+.3f}{bold} | {r.jf_tracker_mem_every_l:.3f} | "
                     f"{r.j_clip:.3f} / {r.j_tracker:.3f} | "
                     f"{r.f_clip:.3f} / {r.f_tracker:.3f} | {r.fps_clip:.2f} | {r.fps_tracker:.2f} |")
    return "\n".join(lines) + "\n"


def write_results(rows: Sequence[CostRow], folder: Path, header: dict[str, str], preamble: str,
                  tag: str = "full") -> tuple[Path, Path]:
    """Append the rows to ``<folder>/tracker_clip_cost.csv``; (re)write
    ``tracker_clip_cost_<tag>.md`` with this run (tag: ``full`` or ``s<short side>``)."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    path = folder / f"{NAME}.csv"
    out = []
    for r in rows:
        values = asdict(r)
        for key in ("jf_clip", "j_clip", "f_clip", "jf_tracker", "j_tracker", "f_tracker",
                    "jf_tracker_mem_every_l"):
            values[key] = f"{values[key]:.5f}"
        values["fps_clip"], values["fps_tracker"] = f"{r.fps_clip:.3f}", f"{r.fps_tracker:.3f}"
        row = {"timestamp": now, **header, **values, "jf_difference": f"{r.jf_difference:.5f}"}
        out.append({k: v for k, v in row.items() if k in COLUMNS})
    record.append_csv(path, out, COLUMNS)
    md = folder / f"{NAME}_{tag}.md"
    write_text(md, preamble + "\n" + markdown(rows))
    return path, md


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", type=Path, help="a vos-train checkpoint of a clip-wise method (PCVOS)")
    weights.add_argument("--random-weights", action="store_true", help="random weights (smoke test: J&F means nothing)")
    parser.add_argument("--method", default="pcvos", help="with --random-weights (default: pcvos)")
    parser.add_argument("--set", dest="set_options", action="append", metavar="KEY=VALUE", default=[],
                        help="method config (with --random-weights) or override (with --checkpoint), repeatable")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="DAVIS-layout root (default: ../shared/data/davis-sample beside the repository)")
    parser.add_argument("--sequences", nargs="*", default=None,
                        help="fully annotated sequences (default: ImageSets/2017/val.txt)")
    parser.add_argument("--clip-lengths", nargs="*", type=int, default=None,
                        help="clip lengths of the clip-wise runs (default: the method's)")
    parser.add_argument("--short-side", type=int, default=None,
                        help="run both modes on frames resized to this short side (default: full resolution)")
    parser.add_argument("--frames", type=int, default=None, help="only the first N frames of each sequence")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=None,
                        help="results folder (default: benchmarks/runs, git-ignored; benchmarks/results with --record)")
    parser.add_argument("--record", action="store_true", help="write to the tracked benchmarks/results/")
    args = parser.parse_args(argv)

    from vos_models.cli.common import parse_set_options
    from vos_models.errors import VOSInputError
    from vos_models.registry import build_method, load_method

    torch.set_num_threads(args.threads)
    try:
        config = parse_set_options(args.set_options)
        if args.checkpoint is not None:
            if not args.checkpoint.is_file():
                raise VOSInputError(f"checkpoint not found: {args.checkpoint}")
            method = load_method(args.checkpoint, **config)
        else:
            torch.manual_seed(0)
            method = build_method(args.method, **config)
        if not args.data.is_dir():
            raise VOSInputError(f"data folder not found: {args.data}")
        if not method.clip_wise:
            raise VOSInputError(f"{method.name!r} is frame-wise: the Tracker and the engine run it alike")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)   # the Tracker's "random weights" warning is not given here
            rows = measure(method, args.data, args.sequences, args.clip_lengths, threads=args.threads,
                           device=args.device, short_side=args.short_side, max_frames=args.frames,
                           log=lambda text: print(text, flush=True))
    except VOSInputError as exc:
        print(f"{NAME}: error: {exc}", file=sys.stderr)
        return 1
    env = environment(args.device)
    env["threads"] = str(args.threads)
    weights_text = str(args.checkpoint) if args.checkpoint is not None else "random"
    header = {**env, "checkpoint": weights_text, "method": method.name,
              "config": " ".join(f"{k}={v}" for k, v in sorted(getattr(method, "build_config", {}).items()))}
    size_text = "full resolution" if args.short_side is None else f"short side {args.short_side} px"
    preamble = (f"# Tracker (one-frame clips) against clip-wise inference, {method.name}\n\n"
                f"Weights: {weights_text}. Frames at {size_text}; scored against the full-resolution "
                f"ground truth with vos_models.metrics (vos-evaluate's code). {env['device_name']}, "
                f"{args.threads} thread(s), torch {env['torch']}, commit {env['commit']}.\n")
    print(markdown(rows), end="")
    folder = args.output or (RESULTS_DIR if args.record else SCRATCH_DIR)
    tag = "full" if args.short_side is None else f"s{args.short_side}"
    csv_path, md_path = write_results(rows, folder, header, preamble, tag)
    print(f"{NAME}: wrote {csv_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
