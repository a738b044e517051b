"""vos-segment / vos-evaluate end to end on excerpts of the shared DAVIS sample (full resolution),
checked the same way for every method: blackswan with one object, and caps with two objects, the
second first annotated on a later frame. 854 and 853 are not multiples of 16, so the padding path
runs."""
from __future__ import annotations

import shutil

import numpy as np

from vos_models.cli import evaluate as evaluate_cli
from vos_models.cli import segment as segment_cli
from vos_models.cli.common import run_main
from vos_models.data import read_mask


def segment(argv) -> int:
    return run_main("vos-segment", segment_cli.main, [str(a) for a in argv] + ["--no-progress"])


def evaluate(gt, pred) -> int:
    return run_main("vos-evaluate", evaluate_cli.main, ["--gt", str(gt), "--pred", str(pred)])


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


def check_blackswan(davis, tmp_path, capsys, method_args: list) -> None:
    """Three frames, the first annotated: every frame written, the annotated one as given, the
    others 854x480 with ids {0, 1}; vos-evaluate scores object blackswan_1."""
    names = [f"{i:05d}" for i in range(3)]
    images, annotations = excerpt(davis, "blackswan", names, names, tmp_path / "davis")
    out = tmp_path / "results"
    assert segment(["--input", images, "--mask", annotations / "00000.png", "--output", out, *method_args]) == 0
    assert "blackswan: 3 frames, 1 object(s)" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "blackswan").glob("*.png")) == [f"{n}.png" for n in names]
    assert np.array_equal(read_mask(out / "blackswan" / "00000.png"), read_mask(annotations / "00000.png"))
    predicted = read_mask(out / "blackswan" / "00002.png")
    assert predicted.shape == (480, 854) and set(np.unique(predicted)) <= {0, 1}
    assert evaluate(tmp_path / "davis", out) == 0
    assert "blackswan_1" in capsys.readouterr().out


def check_caps_second_object_later(davis, tmp_path, capsys, method_args: list) -> None:
    """Object 2 of caps is first annotated on frame 00033: before it only ids {0, 1}, on it the
    given mask, after it ids {0, 1, 2}; vos-evaluate scores both objects."""
    frames = ["00000", "00014", "00033", "00034"]
    images, annotations = excerpt(davis, "caps", frames, ["00000", "00033"], tmp_path / "davis")
    assert set(np.unique(read_mask(annotations / "00000.png"))) == {0, 1}
    out = tmp_path / "results"
    assert segment(["--input", images, "--masks", annotations, "--output", out, *method_args]) == 0
    assert "caps: 4 frames, 2 object(s)" in capsys.readouterr().out
    given = read_mask(annotations / "00033.png")
    arrived = read_mask(out / "caps" / "00033.png")
    assert arrived.shape == (853, 480)
    assert np.array_equal(arrived == 2, given == 2)  # the new object's mask is taken as given
    assert np.array_equal(read_mask(out / "caps" / "00000.png"), read_mask(annotations / "00000.png"))
    assert set(np.unique(read_mask(out / "caps" / "00014.png"))) <= {0, 1}  # object 2 not yet known
    later = read_mask(out / "caps" / "00034.png")
    assert later.shape == (853, 480) and set(np.unique(later)) <= {0, 1, 2}
    assert evaluate(tmp_path / "davis", out) == 0
    report = capsys.readouterr().out
    assert "caps_1" in report and "caps_2" in report
