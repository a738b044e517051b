"""vos-segment --davis follows the semi-supervised protocol: each object's mask is given on the
first frame that annotates it and never again. Fully annotated ground truth (the DAVIS sample,
every frame) must not leak into the predictions as corrections; with --masks a later mask does
correct (the user's own masks)."""
import numpy as np

from tests.conftest import require_shared
from tests.davis_cli import excerpt, segment
from vos_models.data import read_mask


def test_davis_gives_each_object_once_and_masks_correct(tmp_path):
    davis = require_shared("data", "davis-sample")
    names = [f"{i:05d}" for i in range(0, 40, 13)]                     # 00000 00013 00026 00039
    root = tmp_path / "davis"
    images, annotations = excerpt(davis, "blackswan", names, names, root)
    truth = {n: read_mask(annotations / f"{n}.png") for n in names}
    assert not np.array_equal(truth[names[0]], truth[names[-1]])          # the swan moves
    out = tmp_path / "protocol"
    assert segment(["--davis", root, "--output", out, "--method", "copy-previous"]) == 0
    for n in names:  # copy-previous propagates the first mask: later ground truth is not an input
        assert np.array_equal(read_mask(out / "blackswan" / f"{n}.png"), truth[names[0]]), n
    corrected = tmp_path / "corrected"
    assert segment(["--input", images, "--masks", annotations, "--output", corrected,
                    "--method", "copy-previous"]) == 0
    for n in names:  # the user's own masks on later frames are corrections
        assert np.array_equal(read_mask(corrected / "blackswan" / f"{n}.png"), truth[n]), n


def test_davis_starts_a_later_object_on_its_first_annotated_frame(tmp_path):
    davis = require_shared("data", "davis-sample")
    frames = ["00000", "00014", "00033", "00043"]
    root = tmp_path / "davis"
    _, annotations = excerpt(davis, "caps", frames, ["00000", "00014", "00033", "00043"], root)
    out = tmp_path / "results"
    assert segment(["--davis", root, "--output", out, "--method", "copy-previous"]) == 0
    first, later = read_mask(annotations / "00000.png"), read_mask(annotations / "00033.png")
    on_33 = read_mask(out / "caps" / "00033.png")
    # object 2 starts with its annotation; object 1 keeps its propagated first mask (where
    # object 2 does not cover it), not its annotation of frame 00033
    assert np.array_equal(on_33 == 2, later == 2)
    assert np.array_equal(on_33 == 1, (first == 1) & (later != 2))
    assert np.array_equal(read_mask(out / "caps" / "00043.png"), on_33)


def test_first_appearances_keeps_only_new_objects():
    from vos_models.engine.objects import first_appearances

    a = np.array([[1, 1, 0], [0, 255, 0]], np.uint8)
    b = np.array([[1, 2, 2], [0, 255, 1]], np.uint8)
    provide = first_appearances({"f0": a, "f1": b, "f2": b})
    assert np.array_equal(provide("f0"), a)
    assert np.array_equal(provide("f1"), np.array([[0, 2, 2], [0, 255, 0]], np.uint8))  # object 2 only
    assert provide("f2") is None and provide("missing") is None


def test_validation_does_not_see_later_ground_truth():
    # copy-previous with the first mask only cannot be perfect on moving synthetic objects
    from vos_models import build_method
    from vos_models.training.validation import synthetic_validation_videos, validate

    result = validate(build_method("copy-previous"), synthetic_validation_videos(2, size=(48, 64), num_frames=6))
    assert result.global_scores["J&F-Mean"] < 0.99
