"""The two probes behind docs/models.md, "The Tracker with PCVOS" (issue 18).

    OMP_NUM_THREADS=1 python docs/results/tracker_clip_probe.py /tmp/jf/pcvos_sample.pt [DATA]

1. How much the intra-clip refinement uses the other frames of a clip: dog's first clip
   (frames 1-4 after the annotated frame 0, L=5, short side 128) segmented as it is and with
   frame 2 replaced by noise; the largest change of frame 1's probabilities, for the checkpoint
   and for random weights of the same configuration.
2. Per sequence, how many pixels per frame the labels of clip-wise inference (L=5) differ from
   the Tracker's and from the Tracker with memory written every 5 frames.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.tracker_clip_cost import DEFAULT_DATA, _clip_wise, _load_video, _tracked  # noqa: E402
from vos_models.data.davis import DavisLayout  # noqa: E402
from vos_models.engine.inference import InferenceEngine  # noqa: E402
from vos_models.registry import build_method, load_method  # noqa: E402

warnings.simplefilter("ignore")
torch.set_num_threads(1)
checkpoint = sys.argv[1]
layout = DavisLayout(sys.argv[2] if len(sys.argv) > 2 else DEFAULT_DATA)
trained = load_method(checkpoint)
torch.manual_seed(0)
random = build_method("pcvos", **{k: v for k, v in trained.build_config.items() if k != "clip_length"})

video = _load_video(layout, "dog", 128, 5)
for label, method in (("checkpoint", trained), ("random weights", random)):
    engine = InferenceEngine(method, clip_length=5, keep_probabilities=True)
    plain = list(engine.segment(zip(video.frame_names, video.frames), {video.frame_names[0]: video.first_mask}))
    frames = list(video.frames)
    frames[2] = np.random.default_rng(0).integers(0, 255, frames[2].shape, dtype=np.uint8)
    noisy = list(engine.segment(zip(video.frame_names, frames), {video.frame_names[0]: video.first_mask}))
    change = (plain[1].probabilities - noisy[1].probabilities).abs().max().item()
    print(f"{label}: frame 2 -> noise moves frame 1's probabilities by at most {change:.1e}")

for sequence in ("blackswan", "dog", "chair"):
    video = _load_video(layout, sequence, 128, None)
    clip, _ = _clip_wise(trained, video, 5, 1, "cpu")
    tracker, _ = _tracked(trained, video, 1, "cpu")
    every5, _ = _tracked(trained, video, 1, "cpu", mem_every=5)
    names = video.frame_names
    diff = [int((clip[n] != tracker[n]).sum()) for n in names]
    diff5 = [int((clip[n] != every5[n]).sum()) for n in names]
    fg = np.mean([(clip[n] > 0).sum() for n in names])
    print(f"{sequence}: {video.frames[0].shape[1]}x{video.frames[0].shape[0]}, object {fg:.0f} px/frame; labels differ "
          f"from the Tracker's on {np.mean(diff):.1f} px/frame (max {max(diff)}), from the Tracker with memory every "
          f"5 frames on {np.mean(diff5):.1f} (max {max(diff5)})")
