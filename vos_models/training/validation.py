"""Validation J&F during training: run the inference engine on held-out videos and score them."""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import torch

from ..data.davis import DavisLayout
from ..data.synthetic import SyntheticClipGenerator
from ..engine.inference import InferenceEngine
from ..engine.interface import VOSMethod
from ..engine.objects import first_appearances
from ..metrics.evaluate import EvaluationResult, evaluate_sequence

ValidationVideo = tuple[str, Iterable[tuple[str, np.ndarray]], dict[str, np.ndarray], list[str]]


def synthetic_validation_videos(count: int = 4, *, size: tuple[int, int] = (64, 64), num_frames: int = 8,
                                max_objects: int = 2, seed: int = 12345) -> list[ValidationVideo]:
    """``count`` fixed synthetic videos (a stream separate from training), fully annotated."""
    generator = SyntheticClipGenerator(size[0], size[1], num_frames, max_objects=max_objects, seed=seed)
    videos = []
    for i in range(count):
        clip = generator.clip(i)
        frames = (clip.frames.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
        names = [f"{t:05d}" for t in range(num_frames)]
        gt = {n: clip.labels[t].numpy() for t, n in enumerate(names)}
        videos.append((f"synthetic{i:03d}", list(zip(names, frames)), gt, names))
    return videos


def davis_validation_videos(root: str, sequences: list[str] | None = None) -> Iterator[ValidationVideo]:
    """Sequences of a DAVIS-layout dataset (frames streamed, masks read up front)."""
    layout = DavisLayout(root)
    for seq in sequences or layout.sequences():
        source = layout.frames(seq)
        yield seq, source, layout.read_annotations(seq), source.names


@torch.no_grad()
def validate(method: VOSMethod, videos: Iterable[ValidationVideo], *, device: str | torch.device = "cpu",
             precision: str = "float32") -> EvaluationResult:
    """J&F of ``method`` on ``videos``. Masks given to the method: each object's first mask
    only (:func:`~vos_models.engine.objects.first_appearances`; the engine would apply a later
    ground-truth mask as a correction). Restores the method's train/eval mode."""
    was_training = method.training
    engine = InferenceEngine(method, device=device, precision=precision)
    objects = []
    try:
        for name, frames, gt, all_frames in videos:
            predictions = {r.name: r.labels for r in engine.segment(frames, first_appearances(gt))}
            objects.extend(evaluate_sequence(name, gt, predictions, all_frames))
    finally:
        method.train(was_training)
    return EvaluationResult(objects)
