"""Semi-supervised J&F evaluation of predicted masks against ground truth, per object.

Protocol (the official DAVIS 2017 semi-supervised evaluation, generalised to sparse
annotations and to objects that appear after the first frame):

- Objects are the ids 1..max found in the ground truth (255 is void, 0 background).
- An object is scored on the annotated frames after the frame that first gives its mask, and
  never on the sequence's first and last frames. For a fully annotated sequence whose objects
  are all in the first frame this is exactly the official rule (frames 1 .. N-2).
- Per object: J and F per scored frame -> (mean, recall, decay) by ``db_statistics``.
- Global: J-Mean = mean over all objects of their J means (likewise F, recalls, decays);
  J&F-Mean = (J-Mean + F-Mean) / 2.
- Void (255) in the ground truth: ``void="davis2017"`` (default) does what the official code
  does, which zeroes 255 before its void test and so counts void pixels as background;
  ``void="ignore"`` excludes them from both J and F instead.
- A prediction id that no ground-truth object has is an error (as in the official code); an
  object absent from a prediction is an empty mask.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from ..data.errors import DataError
from ..data.frames import natural_key
from ..data.palette import VOID_LABEL, read_mask
from .jf import BOUNDARY_THRESHOLD, db_statistics, f_measure, jaccard

VOID_MODES = ("davis2017", "ignore")


@dataclass
class ObjectScore:
    """Scores of one object of one sequence."""

    sequence: str
    object_id: int
    frames: list[str]
    j_per_frame: np.ndarray
    f_per_frame: np.ndarray
    j_mean: float = field(init=False)
    j_recall: float = field(init=False)
    j_decay: float = field(init=False)
    f_mean: float = field(init=False)
    f_recall: float = field(init=False)
    f_decay: float = field(init=False)

    def __post_init__(self):
        self.j_mean, self.j_recall, self.j_decay = db_statistics(self.j_per_frame)
        self.f_mean, self.f_recall, self.f_decay = db_statistics(self.f_per_frame)

    @property
    def name(self) -> str:
        """The official per-object row name, ``<sequence>_<id>``."""
        return f"{self.sequence}_{self.object_id}"

    @property
    def jf_mean(self) -> float:
        return (self.j_mean + self.f_mean) / 2


def scored_frames(annotated: Sequence[str], all_frames: Sequence[str], first_frame: str) -> list[str]:
    """Annotated frames after ``first_frame``, without the sequence's first and last frames."""
    order = {name: i for i, name in enumerate(all_frames)}
    start = order[first_frame]
    last = len(all_frames) - 1
    return [n for n in annotated if start < order[n] < last and order[n] != 0]


def evaluate_sequence(sequence: str, ground_truth: Mapping[str, np.ndarray],
                      prediction: Callable[[str], np.ndarray] | Mapping[str, np.ndarray],
                      all_frames: Sequence[str] | None = None, *, void: str = "davis2017",
                      bound_th: float = BOUNDARY_THRESHOLD) -> list[ObjectScore]:
    """Score one sequence.

    ground_truth: {frame name: (H, W) ids} for the annotated frames (sparse allowed).
    prediction: {frame name: (H, W) ids} or a function frame name -> ids (called only for
    scored frames, so predictions are read lazily). all_frames: every frame name of the
    sequence in order (default: the annotated names, sorted naturally).
    """
    if void not in VOID_MODES:
        raise ValueError(f"evaluate_sequence: void must be one of {VOID_MODES}, got {void!r}")
    annotated = sorted(ground_truth, key=natural_key)
    if not annotated:
        raise DataError(f"{sequence}: no ground-truth masks")
    frames = list(all_frames) if all_frames is not None else annotated
    missing = [n for n in annotated if n not in set(frames)]
    if missing:
        raise DataError(f"{sequence}: ground truth for frames that are not in the sequence: {missing[:5]}")
    first_seen: dict[int, str] = {}
    for name in annotated:
        ids = np.unique(ground_truth[name])
        for obj in ids[(ids != 0) & (ids != VOID_LABEL)]:
            first_seen.setdefault(int(obj), name)
    if not first_seen:
        return []
    num_objects = max(first_seen)
    get_prediction = prediction.__getitem__ if isinstance(prediction, Mapping) else prediction

    # Which frames each object is scored on; read each needed prediction once.
    per_object_frames = {obj: scored_frames(annotated, frames, first) for obj, first in first_seen.items()}
    needed = sorted({n for names in per_object_frames.values() for n in names}, key=natural_key)
    j_values: dict[int, list[float]] = {obj: [] for obj in first_seen}
    f_values: dict[int, list[float]] = {obj: [] for obj in first_seen}
    for name in needed:
        gt = ground_truth[name]
        try:
            pred = np.asarray(get_prediction(name))
        except KeyError as exc:
            raise DataError(f"{sequence}: no prediction for frame {name}") from exc
        if pred.shape != gt.shape:
            raise DataError(f"{sequence}/{name}: prediction is {pred.shape[1]}x{pred.shape[0]} but the "
                            f"ground truth is {gt.shape[1]}x{gt.shape[0]}")
        extra = np.setdiff1d(np.unique(pred), np.arange(num_objects + 1))
        if extra.size:
            raise DataError(f"{sequence}/{name}: prediction has object ids {extra.tolist()} but the ground "
                            f"truth has only objects 1..{num_objects}")
        void_pixels = (gt == VOID_LABEL) if void == "ignore" else None
        for obj, names in per_object_frames.items():
            if name in names:
                gt_obj, pred_obj = gt == obj, pred == obj
                j_values[obj].append(jaccard(gt_obj, pred_obj, void_pixels))
                f_values[obj].append(f_measure(gt_obj, pred_obj, void_pixels, bound_th))
    return [ObjectScore(sequence, obj, per_object_frames[obj], np.array(j_values[obj]), np.array(f_values[obj]))
            for obj in sorted(first_seen)]


@dataclass
class EvaluationResult:
    """Scores of every object of every sequence, plus the tables."""

    objects: list[ObjectScore]

    def _mean(self, attribute: str) -> float:
        values = [getattr(o, attribute) for o in self.objects]
        return float(np.mean(values)) if values else float("nan")

    @property
    def global_scores(self) -> dict[str, float]:
        j, f = self._mean("j_mean"), self._mean("f_mean")
        return {"J&F-Mean": (j + f) / 2, "J-Mean": j, "J-Recall": self._mean("j_recall"),
                "J-Decay": self._mean("j_decay"), "F-Mean": f, "F-Recall": self._mean("f_recall"),
                "F-Decay": self._mean("f_decay")}

    def per_sequence(self) -> dict[str, dict[str, float]]:
        """{sequence: {"J-Mean", "F-Mean", "J&F-Mean", "objects"}}, averaged over its objects."""
        out: dict[str, dict[str, float]] = {}
        for seq in dict.fromkeys(o.sequence for o in self.objects):
            objs = [o for o in self.objects if o.sequence == seq]
            j = float(np.mean([o.j_mean for o in objs]))
            f = float(np.mean([o.f_mean for o in objs]))
            out[seq] = {"J&F-Mean": (j + f) / 2, "J-Mean": j, "F-Mean": f, "objects": len(objs)}
        return out

    def per_object_rows(self) -> list[dict]:
        return [{"Sequence": o.name, "J&F-Mean": o.jf_mean, "J-Mean": o.j_mean, "J-Recall": o.j_recall,
                 "J-Decay": o.j_decay, "F-Mean": o.f_mean, "F-Recall": o.f_recall, "F-Decay": o.f_decay,
                 "Frames": len(o.frames)} for o in self.objects]

    def csv_text(self) -> str:
        """Per-object rows, then a ``Global`` row (mean over objects)."""
        rows = self.per_object_rows()
        columns = ["Sequence", "J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay", "Frames"]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row["Sequence"]] + [_fmt(row[c]) for c in columns[1:-1]] + [row["Frames"]])
        g = self.global_scores
        writer.writerow(["Global"] + [_fmt(g[c]) for c in columns[1:-1]] + [sum(r["Frames"] for r in rows)])
        return buffer.getvalue()

    def markdown(self) -> str:
        lines = ["| Sequence | J&F | J | F | J recall | F recall | J decay | F decay | frames |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in self.per_object_rows():
            lines.append(f"| {row['Sequence']} | {_fmt(row['J&F-Mean'])} | {_fmt(row['J-Mean'])} | "
                         f"{_fmt(row['F-Mean'])} | {_fmt(row['J-Recall'])} | {_fmt(row['F-Recall'])} | "
                         f"{_fmt(row['J-Decay'])} | {_fmt(row['F-Decay'])} | {row['Frames']} |")
        g = self.global_scores
        lines.append(f"| **mean ({len(self.objects)} objects)** | **{_fmt(g['J&F-Mean'])}** | {_fmt(g['J-Mean'])} | "
                     f"{_fmt(g['F-Mean'])} | {_fmt(g['J-Recall'])} | {_fmt(g['F-Recall'])} | "
                     f"{_fmt(g['J-Decay'])} | {_fmt(g['F-Decay'])} | |")
        return "\n".join(lines) + "\n"


def _fmt(value: float) -> str:
    return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.5f}"


def _ground_truth(gt_root: Path):
    """(DavisLayout or None, the folder of <seq>/ annotation folders) of a ground-truth root."""
    from ..data.davis import DavisLayout

    if not gt_root.is_dir():
        raise DataError(f"ground-truth folder not found: {gt_root}")
    layout = DavisLayout(gt_root) if (gt_root / "JPEGImages").is_dir() else None
    if layout is not None:
        return layout, layout.mask_root
    if (gt_root / "Annotations").is_dir():  # a dataset root without its frames
        mask_root = gt_root / "Annotations"
        return None, mask_root / "480p" if (mask_root / "480p").is_dir() else mask_root
    return None, gt_root


@dataclass(frozen=True)
class SequenceMatch:
    """Which sequences a prediction folder covers: scored (in both), missing (ground truth
    without predictions), unknown (predictions without ground truth)."""
    scored: list[str]
    missing: list[str]
    unknown: list[str]


def match_sequences(gt_root: str | Path, pred_root: str | Path) -> SequenceMatch:
    """Match the sequence folders of a prediction root against a ground truth; DataError when
    none matches."""
    gt_root, pred_root = Path(gt_root), Path(pred_root)
    _, mask_root = _ground_truth(gt_root)
    if not pred_root.is_dir():
        raise DataError(f"prediction folder not found: {pred_root}")
    truth = sorted((p.name for p in mask_root.iterdir() if p.is_dir()), key=natural_key)
    predicted = sorted((p.name for p in pred_root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                       key=natural_key)
    scored = [s for s in truth if s in set(predicted)]
    if not scored:
        raise DataError(f"no prediction folder in {pred_root} matches a ground-truth sequence in {mask_root} "
                        f"(predictions: {', '.join(predicted[:5]) or 'none'})")
    return SequenceMatch(scored, [s for s in truth if s not in set(predicted)],
                         [s for s in predicted if s not in set(truth)])


def evaluate_folders(gt_root: str | Path, pred_root: str | Path, sequences: Sequence[str] | None = None, *,
                     void: str = "davis2017", bound_th: float = BOUNDARY_THRESHOLD,
                     progress: bool = False) -> EvaluationResult:
    """Score ``pred_root/<seq>/<frame>.png`` against a ground truth.

    gt_root: a DAVIS-layout root (``Annotations/480p`` and ``JPEGImages/480p`` inside: the
    frame list comes from JPEGImages), a root with only ``Annotations``, or a folder of
    ``<seq>/<frame>.png`` annotation folders (without JPEGImages the frame list is the
    annotated frames: right for fully annotated sequences). sequences: default every ground-truth
    sequence that has a prediction folder (an error if none has).
    """
    gt_root, pred_root = Path(gt_root), Path(pred_root)
    layout, mask_root = _ground_truth(gt_root)
    if sequences is None:
        sequences = match_sequences(gt_root, pred_root).scored
    objects: list[ObjectScore] = []
    iterator = sequences
    if progress:
        from tqdm import tqdm
        iterator = tqdm(sequences, desc="evaluate", unit="seq")
    for seq in iterator:
        gt_folder = mask_root / seq
        if not gt_folder.is_dir():
            raise DataError(f"no ground truth for sequence {seq} in {mask_root}")
        ground_truth = {p.stem: read_mask(p) for p in gt_folder.glob("*.png")}
        all_frames = layout.frames(seq).names if layout is not None else None
        pred_folder = pred_root / seq
        if not pred_folder.is_dir():
            raise DataError(f"no predictions for sequence {seq} (expected folder {pred_folder})")

        def read_prediction(name: str, folder=pred_folder, seq=seq) -> np.ndarray:
            path = folder / f"{name}.png"
            if not path.is_file():
                raise DataError(f"{seq}: prediction missing for frame {name} ({path})")
            return read_mask(path)

        objects.extend(evaluate_sequence(seq, ground_truth, read_prediction, all_frames, void=void, bound_th=bound_th))
    return EvaluationResult(objects)
