"""benchmarks/tracker_clip_cost.py: the Tracker's one-frame clips against clip-wise inference,
on a tiny synthetic DAVIS-layout dataset with random PCVOS weights (the plumbing, not the
quality: random weights score near 0 in both modes)."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import tracker_clip_cost
from vos_models import build_method
from vos_models.data.palette import write_mask

SMALL_PCVOS = dict(key_backbone="resnet18", key_dim=16, value_dim=32, icr_dim=16, decoder_dim=16, clip_length=3)
H, W, FRAMES = 48, 64, 5


def _dataset(root, sequences=("square", "disc")):
    rng = np.random.default_rng(0)
    for k, seq in enumerate(sequences):
        images, masks = root / "JPEGImages" / "480p" / seq, root / "Annotations" / "480p" / seq
        images.mkdir(parents=True)
        masks.mkdir(parents=True)
        for t in range(FRAMES):
            frame = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
            labels = np.zeros((H, W), np.uint8)
            labels[10 + t:30 + t, 12 + 2 * t + k:36 + 2 * t] = 1
            frame[labels == 1] = (200, 40, 40)
            Image.fromarray(frame).save(images / f"{t:05d}.jpg")
            write_mask(masks / f"{t:05d}.png", labels)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(sequences) + "\n")
    return root


def test_measure_scores_both_modes_per_sequence(tmp_path):
    data = _dataset(tmp_path / "davis")
    torch.manual_seed(0)
    method = build_method("pcvos", **SMALL_PCVOS)
    rows = tracker_clip_cost.measure(method, data, clip_lengths=[3, 2], threads=1, short_side=32, warmup_frames=2)
    assert [(r.sequence, r.clip_length) for r in rows] == [
        ("square", 3), ("square", 2), ("disc", 3), ("disc", 2), ("mean", 3), ("mean", 2)]
    for r in rows:
        for value in (r.jf_clip, r.j_clip, r.f_clip, r.jf_tracker, r.j_tracker, r.f_tracker, r.jf_tracker_mem_every_l):
            assert 0.0 <= value <= 1.0 and not math.isnan(value)
        assert r.jf_clip == pytest.approx((r.j_clip + r.f_clip) / 2)
        assert r.jf_difference == pytest.approx(r.jf_clip - r.jf_tracker)
        assert r.fps_clip > 0 and r.fps_tracker > 0
    assert rows[0].frames == FRAMES and rows[0].size == "43x32" and rows[0].scored_at == "64x48"
    # the tracker runs once per sequence: the same score at every clip length
    assert rows[0].jf_tracker == rows[1].jf_tracker
    assert "| **mean** |" in tracker_clip_cost.markdown(rows)


def test_main_writes_results_and_refuses_a_missing_checkpoint(tmp_path, capsys):
    data = _dataset(tmp_path / "davis", sequences=("square",))
    out = tmp_path / "out"
    args = ["--data", str(data), "--frames", "3", "--threads", "1", "--output", str(out), "--random-weights"]
    args += [f"--set={k}={v!r}" for k, v in SMALL_PCVOS.items()]
    assert tracker_clip_cost.main(args) == 0
    with open(out / "tracker_clip_cost.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["sequence"] for r in rows] == ["square", "mean"] and rows[0]["checkpoint"] == "random"
    assert float(rows[0]["jf_difference"]) == pytest.approx(float(rows[0]["jf_clip"]) - float(rows[0]["jf_tracker"]),
                                                            abs=2e-5)
    assert "J&F tracker" in (out / "tracker_clip_cost_full.md").read_text()
    capsys.readouterr()
    assert tracker_clip_cost.main(["--checkpoint", str(tmp_path / "missing.pt"), "--data", str(data)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"tracker_clip_cost: error: checkpoint not found: {tmp_path / 'missing.pt'}"]
