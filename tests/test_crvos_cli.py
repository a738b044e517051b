"""CRVOS through the command lines: vos-segment with our checkpoints and public ones."""
import json
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import require_shared
from vos_models.cli.common import run_main
from vos_models.cli.segment import main as segment_main
from vos_models.data.palette import read_mask, write_mask
from vos_models.methods.crvos.convert import export_public_state_dict
from vos_models.registry import build_method, save_checkpoint

TINY_FLAGS = ["--backbone", "resnet18", "--s16-width", "32", "--width", "16"]
TINY = dict(backbone="resnet18", s16_width=32, width=16)


@pytest.fixture
def tiny_video(tmp_path):
    """Four 50 x 70 frames (not multiples of 16) and a two-object first mask."""
    frames = tmp_path / "video"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(frames / f"{i:05d}.png")
    labels = np.zeros((50, 70), np.uint8)
    labels[5:20, 5:30] = 1
    labels[25:45, 35:65] = 2
    write_mask(tmp_path / "first.png", labels)
    return frames, tmp_path / "first.png", labels


def segment(argv, capsys):
    code = run_main("vos-segment", segment_main, [str(a) for a in argv] + ["--device", "cpu", "--no-progress"])
    return code, capsys.readouterr()


def test_segment_with_a_public_checkpoint(tiny_video, tmp_path, capsys):
    frames, mask, labels = tiny_video
    torch.manual_seed(0)
    torch.save(export_public_state_dict(build_method("crvos", **TINY)), tmp_path / "public.tar")
    code, out = segment(["--input", frames, "--mask", mask, "--output", tmp_path / "out", "--method", "crvos",
                         "--public-checkpoint", tmp_path / "public.tar", *TINY_FLAGS], capsys)
    assert code == 0, out.err
    written = sorted((tmp_path / "out" / "video").glob("*.png"))
    assert len(written) == 4
    assert (read_mask(written[0]) == labels).all()
    assert set(np.unique(read_mask(written[-1]))) <= {0, 1, 2}


def test_segment_with_our_checkpoint(tiny_video, tmp_path, capsys):
    frames, mask, _ = tiny_video
    save_checkpoint(tmp_path / "ours.pt", build_method("crvos", **TINY))
    code, out = segment(["--input", frames, "--mask", mask, "--output", tmp_path / "out",
                         "--checkpoint", tmp_path / "ours.pt"], capsys)
    assert code == 0, out.err
    assert len(list((tmp_path / "out" / "video").glob("*.png"))) == 4


def test_segment_refuses_a_wrong_public_checkpoint(tiny_video, tmp_path, capsys):
    frames, mask, _ = tiny_video
    torch.save(build_method("crvos", **TINY).state_dict(), tmp_path / "ours-as-public.tar")
    code, out = segment(["--input", frames, "--mask", mask, "--output", tmp_path / "out", "--method", "crvos",
                         "--public-checkpoint", tmp_path / "ours-as-public.tar", *TINY_FLAGS], capsys)
    assert code == 1
    assert "not a public CRVOS" in out.err and len(out.err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "video").exists()


@pytest.mark.slow
def test_segment_blackswan_with_the_paper_model(tmp_path, capsys):
    """The paper model (ResNet-50) end to end on the first frames of DAVIS blackswan (480 x 854)."""
    manifest = require_shared("parity", "crvos", "manifest.json")
    sequence = require_shared("data", "davis-sample", "JPEGImages", "480p", "blackswan")
    annotation = require_shared("data", "davis-sample", "Annotations", "480p", "blackswan", "00000.png")
    sys.path.insert(0, str(manifest.parents[1]))
    try:
        from make_weights import fill
    finally:
        sys.path.remove(str(manifest.parents[1]))
    spec = json.loads(manifest.read_text())
    torch.save(fill(spec["keys"], seed=spec["seed"], gain=spec["gain"]), tmp_path / "CRVOS_fill.tar")
    frames = tmp_path / "blackswan"
    frames.mkdir()
    for path in sorted(sequence.glob("*.jpg"))[:3]:
        shutil.copy(path, frames / path.name)
    code, out = segment(["--input", frames, "--mask", annotation, "--output", tmp_path / "out",
                         "--method", "crvos", "--public-checkpoint", tmp_path / "CRVOS_fill.tar"], capsys)
    assert code == 0, out.err
    written = sorted((tmp_path / "out" / "blackswan").glob("*.png"))
    assert [p.stem for p in written] == ["00000", "00001", "00002"]
    assert read_mask(written[1]).shape == (480, 854)
    assert (read_mask(written[0]) == read_mask(annotation)).all()
