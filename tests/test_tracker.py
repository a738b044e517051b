"""vos_models.Tracker: frames one at a time, masks on any frame, corrections and deletions, for
every method (random weights, small configurations: the contract is checked, not the quality)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vos_models import Tracker, build_method

SMALL = {
    "rgmp": dict(backbone="resnet18", decoder_channels=32),
    "crvos": dict(backbone="resnet18", s16_width=32, width=16),
    "ttvos": dict(backbone="resnet18"),
    "pcvos": dict(key_backbone="resnet18", key_dim=16, value_dim=32, icr_dim=16, decoder_dim=16),
    "copy-previous": {},
}
H, W = 64, 96


def _frames(n: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (H, W, 3), dtype=np.uint8) for _ in range(n)]


def _box(top: int, left: int, height: int, width: int, value: int, labels: np.ndarray | None = None) -> np.ndarray:
    labels = np.zeros((H, W), np.uint8) if labels is None else labels
    labels[top:top + height, left:left + width] = value
    return labels


def _tracker(name: str) -> Tracker:
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="random weights") if name != "copy-previous" else _no_warning():
        return Tracker(name, device="cpu", config=SMALL[name])


class _no_warning:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("name", list(SMALL))
def test_scripted_session_with_a_correction_a_new_object_and_a_deletion(name):
    """The issue's session: a first mask with two objects, a correction of object 1 on frame 3,
    a new object 3 on frame 4, delete(2); every given mask is the output on its frame."""
    tracker = _tracker(name)
    frames = _frames()
    first = _box(30, 50, 20, 30, 2, _box(5, 5, 20, 30, 1))
    given = {0: first, 2: _box(8, 10, 22, 26, 1), 3: _box(40, 4, 16, 20, 3)}
    for t, frame in enumerate(frames):
        if t == 4:
            tracker.delete([2])
        labels = tracker.step(frame, given.get(t))
        assert labels.shape == (H, W) and labels.dtype == np.uint8
        for obj in np.unique(given.get(t, np.zeros(1))):
            if obj:
                assert np.array_equal(labels == obj, given[t] == obj), (name, t, obj)
        if t >= 4:
            assert not (labels == 2).any(), (name, t)
    assert tracker.objects == [1, 3]
    prob = tracker.probabilities
    assert prob.shape == (3, H, W) and torch.allclose(prob.sum(0), torch.ones(H, W), atol=1e-5)


def test_a_bool_mask_is_object_1_and_255_is_void():
    tracker = Tracker("copy-previous", device="cpu")
    frames = _frames(2)
    mask = np.zeros((H, W), bool)
    mask[10:30, 10:40] = True
    assert np.array_equal(tracker.step(frames[0], mask), mask.astype(np.uint8))
    assert tracker.objects == [1]
    labels = _box(10, 10, 20, 30, 4)
    labels[0:5] = 255                           # void: neither background nor an object
    tracker.reset()
    out = tracker.step(frames[0], labels)
    assert tracker.objects == [4] and set(np.unique(out)) <= {0, 4}
    assert np.array_equal(out[5:] == 4, labels[5:] == 4)


def test_corrections_reach_what_the_method_remembers():
    """copy-previous outputs its memory: after a correction, later frames follow the corrected mask."""
    tracker = Tracker("copy-previous", device="cpu")
    frames = _frames(4)
    tracker.step(frames[0], _box(5, 5, 10, 10, 1))
    corrected = _box(20, 30, 12, 14, 1)
    assert np.array_equal(tracker.step(frames[1], corrected), corrected)
    assert np.array_equal(tracker.step(frames[2]), corrected)
    tracker.delete([1])
    assert not tracker.step(frames[3]).any() and tracker.objects == []
    assert tracker.method is not None and tracker.frame_index == 4


def test_bad_input_is_named():
    tracker = Tracker("copy-previous", device="cpu")
    frame = _frames(1)[0]
    with pytest.raises(ValueError, match="the first mask has no object"):
        tracker.step(frame, np.zeros((H, W), np.uint8))
    with pytest.raises(ValueError, match=r"mask is 10x64 \(WxH\) but the frames are 96x64"):
        tracker.step(frame, np.ones((64, 10), np.uint8))
    with pytest.raises(ValueError, match=r"frame must be an \(H, W, 3\) uint8 RGB array"):
        tracker.step(frame.astype(np.float32))
    tracker.step(frame, _box(5, 5, 10, 10, 1))
    with pytest.raises(ValueError, match="call reset\\(\\) for a new video"):
        tracker.step(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(KeyError, match="object 7 is not tracked"):
        tracker.delete([7])
    with pytest.raises(TypeError, match="unknown option"):
        Tracker("copy-previous", device="cpu", prefetch=2)
    # a tensor frame (3, H, W), uint8 or float in [0, 1], is the same frame
    same = tracker.step(torch.from_numpy(frame).permute(2, 0, 1))
    assert same.shape == (H, W)


def test_frames_before_the_first_object_are_background():
    tracker = Tracker(build_method("copy-previous"), device="cpu")
    frames = _frames(3)
    assert not tracker.step(frames[0]).any() and tracker.probabilities is None
    assert np.array_equal(tracker.step(frames[1], _box(1, 1, 5, 5, 9)), _box(1, 1, 5, 5, 9))
    assert tracker.frame_index == 2
