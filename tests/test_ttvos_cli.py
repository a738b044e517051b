"""TTVOS end to end through vos-segment / vos-evaluate on the DAVIS sample (short excerpts,
full resolution): blackswan with converted public weights, caps with two objects, the second
arriving on a later frame. 854 and 853 are not multiples of 16, so the padding path runs."""
import json
import shutil
import sys

import numpy as np
import pytest
import torch

from conftest import require_shared
from vos_models.cli import evaluate as evaluate_cli
from vos_models.cli import segment as segment_cli
from vos_models.cli.common import run_main
from vos_models.data import read_mask


def segment(argv):
    return run_main("vos-segment", segment_cli.main, [str(a) for a in argv] + ["--no-progress"])


def excerpt(davis, sequence, frames, masks, dest):
    """Copy some frames (names kept) and masks of a DAVIS-sample sequence."""
    images, annotations = dest / "JPEGImages" / "480p" / sequence, dest / "Annotations" / "480p" / sequence
    images.mkdir(parents=True)
    annotations.mkdir(parents=True)
    for name in frames:
        shutil.copy(davis / "JPEGImages" / "480p" / sequence / f"{name}.jpg", images)
    for name in masks:
        shutil.copy(davis / "Annotations" / "480p" / sequence / f"{name}.png", annotations)
    return images, annotations


@pytest.fixture(scope="module")
def davis():
    return require_shared("data", "davis-sample")


def test_blackswan_with_public_weights(davis, tmp_path, capsys):
    folder = require_shared("parity", "ttvos")
    sys.path.insert(0, str(folder.parent))
    from make_weights import fill
    spec = json.loads((folder / "manifest.json").read_text())
    checkpoint = tmp_path / "ttvos_public.pth.tar"
    torch.save({"epoch": 1, "net": fill(spec["keys"], seed=spec["seed"], gain=spec["gain"])}, checkpoint)

    names = [f"{i:05d}" for i in range(3)]
    images, annotations = excerpt(davis, "blackswan", names, names, tmp_path / "davis")
    out = tmp_path / "results"
    rc = segment(["--input", images, "--mask", annotations / "00000.png", "--output", out,
                  "--method", "ttvos", "--public-checkpoint", checkpoint])
    assert rc == 0
    assert "blackswan: 3 frames, 1 object(s)" in capsys.readouterr().out
    results = sorted(p.name for p in (out / "blackswan").glob("*.png"))
    assert results == [f"{n}.png" for n in names]
    assert np.array_equal(read_mask(out / "blackswan" / "00000.png"), read_mask(annotations / "00000.png"))
    predicted = read_mask(out / "blackswan" / "00002.png")
    assert predicted.shape == (480, 854) and set(np.unique(predicted)) <= {0, 1}
    assert run_main("vos-evaluate", evaluate_cli.main, ["--gt", str(tmp_path / "davis"), "--pred", str(out)]) == 0
    assert "blackswan_1" in capsys.readouterr().out


def test_caps_second_object_arrives_later(davis, tmp_path, capsys):
    frames = ["00000", "00014", "00033", "00034"]
    images, annotations = excerpt(davis, "caps", frames, ["00000", "00033"], tmp_path / "davis")
    assert set(np.unique(read_mask(annotations / "00000.png"))) == {0, 1}
    out = tmp_path / "results"
    assert segment(["--input", images, "--masks", annotations, "--output", out, "--method", "ttvos"]) == 0
    assert "caps: 4 frames, 2 object(s)" in capsys.readouterr().out
    given = read_mask(annotations / "00033.png")
    arrived = read_mask(out / "caps" / "00033.png")
    assert arrived.shape == (853, 480)
    assert np.array_equal(arrived == 2, given == 2)  # the new object's mask is taken as given
    assert np.array_equal(read_mask(out / "caps" / "00000.png"), read_mask(annotations / "00000.png"))
    assert set(np.unique(read_mask(out / "caps" / "00014.png"))) <= {0, 1}  # object 2 not yet known
