"""Training clips from video datasets: a YouTube-VOS-layout folder (generated here) and the
DAVIS sample, through VideoClipDataset and through vos-train (with augmentation and the
exponential schedule)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import require_shared
from vos_models.cli import train as train_cli
from vos_models.cli.common import run_main
from vos_models.data import DavisLayout, write_mask
from vos_models.data.datasets import VideoClipDataset
from vos_models.registry import load_checkpoint

FRAMES = 20   # every frame has a JPEG; every 5th has a palette PNG, as YouTube-VOS train


def make_youtube_vos(root, videos=("a1b2c3", "d4e5f6"), height=36, width=64):
    """<root>/JPEGImages/<video>/00000.jpg.., Annotations/<video>/00000.png, 00005.png.., meta.json.

    Frame k is a flat grey of value 10 k (so a clip tells which frames it used). In the second
    video the objects enter at frame 5: its first annotation is empty, as happens in YouTube-VOS.
    """
    meta = {"videos": {}}
    for v, video in enumerate(videos):
        (root / "JPEGImages" / video).mkdir(parents=True)
        (root / "Annotations" / video).mkdir(parents=True)
        objects = {}
        for k in range(FRAMES):
            Image.fromarray(np.full((height, width, 3), 10 * k, np.uint8)).save(
                root / "JPEGImages" / video / f"{k:05d}.jpg", quality=100)
            if k % 5:
                continue
            labels = np.zeros((height, width), np.uint8)
            if not (v == 1 and k == 0):
                labels[6:20, 4 + k:20 + k] = 1
                labels[22:32, 40:56] = 3                # YouTube-VOS ids need not be contiguous
                for obj in ("1", "3"):
                    objects.setdefault(obj, {"category": "thing", "frames": []})["frames"].append(f"{k:05d}")
            write_mask(root / "Annotations" / video / f"{k:05d}.png", labels)
        meta["videos"][video] = {"objects": objects}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def youtube_vos(tmp_path):
    return make_youtube_vos(tmp_path / "ytvos" / "train")


def test_youtube_vos_layout_clips_use_annotated_frames_with_objects(youtube_vos):
    layout = DavisLayout(youtube_vos)
    assert layout.image_root == youtube_vos / "JPEGImages" and layout.sequences() == ["a1b2c3", "d4e5f6"]
    ds = VideoClipDataset(youtube_vos, num_frames=3, size=(32, 48), max_skip=2, max_objects=2, seed=1)
    assert len(ds) == 2
    for epoch in range(4):
        ds.set_epoch(epoch)
        for index in range(2):
            item = ds[index]
            assert item["frames"].shape == (3, 3, 32, 48) and item["masks"].shape == (3, 2, 32, 48)
            grey = [round(float(f.mean()) * 255 / 10) for f in item["frames"]]
            assert all(k % 5 == 0 for k in grey) and grey == sorted(set(grey)), grey  # annotated, in order
            if index == 1:
                assert grey[0] != 0  # the empty first annotation never starts a clip
            assert int(item["num_objects"]) >= 1 and item["masks"][0, 0].sum() > 0
            assert set(item["masks"].unique().tolist()) <= {0.0, 1.0}


def test_a_video_without_any_object_is_reported(tmp_path):
    root = make_youtube_vos(tmp_path / "yt", videos=("only",))
    for png in (root / "Annotations" / "only").glob("*.png"):
        write_mask(png, np.zeros((36, 64), np.uint8))
    ds = VideoClipDataset(root, num_frames=2, size=(32, 32))
    with pytest.raises(ValueError, match="video 'only' has no annotated frame with an object"):
        ds[0]


def test_davis_sample_sparse_and_dense_sequences():
    root = require_shared("data", "davis-sample")
    ds = VideoClipDataset(root, ["caps", "dog"], num_frames=4, size=(40, 40), max_objects=3, seed=3)
    for epoch in range(2):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            assert item["masks"].shape == (4, 3, 40, 40) and int(item["num_objects"]) >= 1
            n = int(item["num_objects"])
            assert all(item["masks"][0, k].sum() > 0 for k in range(n))  # every target starts in view
            assert float(item["masks"][:, n:].sum()) == 0.0


COMMON = ["--backbone", "resnet18", "--finetune-layers", "all", "--s16-width", "16", "--width", "8",
          "--size", "32", "32", "--num-frames", "3", "--batch-size", "1", "--max-objects", "2",
          "--log-every", "1", "--no-progress", "--device", "cpu", "--lr", "1e-3"]
AUGMENT = ["--hflip", "0.5", "--rotate", "30", "--shear", "30", "--scale", "0.75", "1.25"]


def test_vos_train_crvos_on_youtube_vos_with_augmentation_and_exponential_decay(youtube_vos, tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    # 2 videos, batch 1: 2 steps per epoch; the lr halves once per epoch
    args = ["--method", "crvos", *COMMON, *AUGMENT, "--data", str(youtube_vos), "--steps", "5",
            "--schedule", "exponential", "--gamma", "0.5", "--output", str(out)]
    assert run_main("vos-train", train_cli.main, args) == 0
    assert "done at step 5/5" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["decay_every"] == 2 and config["schedule"] == "exponential"
    assert config["extra"]["augmentation"] == {"hflip": 0.5, "rotate_deg": 30.0, "shear_deg": 30.0,
                                               "scale": [0.75, 1.25]}
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    # "lr" is logged after the step, i.e. the rate of the next step (index = step)
    assert [r["lr"] for r in records] == pytest.approx([1e-3 * 0.5 ** (s // 2) for s in range(1, 6)])
    assert load_checkpoint(out / "last.pt")["step"] == 5


def test_vos_train_augmented_davis_run_resumes_exactly(tmp_path):
    davis = require_shared("data", "davis-sample")
    torch.set_num_threads(1)
    args = ["--method", "crvos", *COMMON, *AUGMENT, "--data", str(davis), "--sequences", "blackswan,dog",
            "--steps", "3", "--checkpoint-every", "1"]
    assert run_main("vos-train", train_cli.main, [*args, "--output", str(tmp_path / "full")]) == 0
    assert run_main("vos-train", train_cli.main,
                    [*args, "--output", str(tmp_path / "part"), "--max-steps-this-run", "1"]) == 0
    assert run_main("vos-train", train_cli.main, [*args, "--output", str(tmp_path / "part"), "--resume"]) == 0
    full, part = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "part" / "last.pt")
    assert full["step"] == part["step"] == 3
    for key, value in full["state_dict"].items():
        assert torch.equal(value, part["state_dict"][key]), key


def test_bad_augmentation_flags_are_one_line_errors(tmp_path, capsys):
    args = ["--method", "tiny-prop", "--output", str(tmp_path / "x"), "--steps", "1", "--hflip", "2"]
    with pytest.raises(SystemExit) as exit_info:  # argparse refuses it: exit 2, two lines
        run_main("vos-train", train_cli.main, args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --hflip: expected a number in [0, 1], got 2" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 2 and not (tmp_path / "x").exists()
    args = ["--method", "tiny-prop", "--output", str(tmp_path / "x"), "--steps", "1", "--scale", "2", "1"]
    assert run_main("vos-train", train_cli.main, args) == 1   # a range check of the dataclass: one line
    err = capsys.readouterr().err
    assert "--scale" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
