"""Registry, checkpoints and the interface helpers every method relies on."""
import os

import pytest
import torch

from vos_models import (CheckpointError, VideoState, VOSMethod, available_methods, build_method, load_checkpoint,
                        load_method, register_method, save_checkpoint)
from vos_models.engine.interface import grow_objects, merge_new_masks
from vos_models.engine.session import VideoSession
from vos_models.errors import VOSInputError
from vos_models.registry import MethodOption, method_options

torch.set_num_threads(1)


def test_builtin_methods_register_and_build():
    names = available_methods()
    assert "copy-previous" in names and "tiny-prop" in names
    method = build_method("tiny-prop", channels=4)
    assert method.name == "tiny-prop" and method.build_config == {"channels": 4}
    with pytest.raises(ValueError, match="unknown method 'nope'.*copy-previous"):
        build_method("nope")
    with pytest.raises(VOSInputError, match="method 'tiny-prop' has no config key 'not_an_option'; it takes channels"):
        build_method("tiny-prop", not_an_option=1)


def test_register_rejects_duplicates_and_records_options():
    class Dummy(VOSMethod):
        pass

    register_method("test-dummy", Dummy, options={"clip_length": MethodOption(int, "frames per clip")})
    assert set(method_options("test-dummy")) == {"clip_length"}
    with pytest.raises(ValueError, match="already registered"):
        register_method("test-dummy", lambda: Dummy())
    with pytest.raises(TypeError, match="not a VOSMethod"):
        register_method("test-bad", lambda: torch.nn.Linear(1, 1))
        build_method("test-bad")


def test_unsaved_options_stay_out_of_the_build_config(tmp_path):
    """An initialisation-only option (a weight file) is used by the factory but not recorded,
    so a checkpoint loads after the file is gone."""
    class Init(VOSMethod):
        def __init__(self, channels=2, weights_file=None):
            super().__init__()
            self.layer = torch.nn.Linear(channels, channels)
            if weights_file is not None:
                self.layer.load_state_dict(torch.load(weights_file))

    register_method("test-unsaved", Init, overwrite=True, options={
        "channels": MethodOption(int, "width"), "weights_file": MethodOption(str, "start from", saved=False)})
    weights = tmp_path / "init.pt"
    torch.save(torch.nn.Linear(3, 3).state_dict(), weights)
    method = build_method("test-unsaved", channels=3, weights_file=str(weights))
    assert method.build_config == {"channels": 3}
    save_checkpoint(tmp_path / "ckpt.pt", method)
    weights.unlink()
    loaded = load_method(tmp_path / "ckpt.pt")
    assert torch.equal(loaded.layer.weight, method.layer.weight)
    assert "backbone_weights" not in {k for k, o in method_options("ttvos").items() if o.saved}


def test_checkpoint_roundtrip_atomic_and_wrong_method(tmp_path):
    torch.manual_seed(0)
    method = build_method("tiny-prop", channels=4)
    path = save_checkpoint(tmp_path / "sub" / "ck.pt", method, {"step": 7})
    assert sorted(os.listdir(tmp_path / "sub")) == ["ck.pt"]  # no temporary file left behind
    payload = load_checkpoint(path, expected_method="tiny-prop")
    assert payload["step"] == 7 and payload["config"] == {"channels": 4}
    again = load_method(path)
    for (k, a), (_, b) in zip(method.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(CheckpointError, match="checkpoint of method 'tiny-prop', not 'copy-previous'"):
        load_checkpoint(path, expected_method="copy-previous")
    torch.save({"weight": torch.zeros(1)}, tmp_path / "public.pt")
    with pytest.raises(CheckpointError, match="not a vos_models checkpoint"):
        load_checkpoint(tmp_path / "public.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "garbage.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "x.pt", method, {"state_dict": 1})


def test_save_failure_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    method = build_method("tiny-prop", channels=4)
    path = save_checkpoint(tmp_path / "ck.pt", method, {"step": 1})
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, method, {"step": 2})
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["ck.pt"]


def test_merge_new_masks_and_grow():
    h, w = 4, 5
    masks = torch.zeros(2, h, w)
    masks[0, :2] = 1
    masks[1, 3:] = 1
    first = merge_new_masks(None, masks, [1, 2])
    assert first.shape == (1, 3, h, w)
    assert torch.allclose(first.sum(1), torch.ones(1, h, w))
    assert torch.equal(first[0, 1:], masks) and torch.equal(first[0, 0], 1 - masks.sum(0))
    # a later object (id 3) arrives over part of object 1: given mask wins, sum stays 1
    prob = torch.softmax(torch.randn(1, 3, h, w), 1)
    late = torch.zeros(1, h, w)
    late[0, 0, :] = 1
    merged = merge_new_masks(prob, late, [3])
    assert merged.shape == (1, 4, h, w)
    assert torch.equal(merged[0, 3], late[0])
    assert torch.allclose(merged.sum(1), torch.ones(1, h, w), atol=1e-6)
    assert torch.all(merged[0, :3, 0] == 0)
    # a prediction that already holds a channel for the new id: that channel is discarded and
    # the others renormalised (background 0.2, object 1 0.2, new object 0.6 -> 0.5 / 0.5 off-mask)
    q = torch.tensor([0.2, 0.2, 0.6]).view(1, 3, 1, 1).expand(1, 3, h, w).clone()
    merged = merge_new_masks(q, late, [2])
    assert torch.allclose(merged.sum(1), torch.ones(1, h, w))
    assert torch.allclose(merged[0, :2, 1:], torch.full((2, h - 1, w), 0.5)) and torch.equal(merged[0, 2], late[0])
    assert grow_objects(prob, 5).shape == (1, 6, h, w)
    with pytest.raises(ValueError):
        grow_objects(prob, 1)


def test_video_state_checks_object_numbering_and_a_session_feeds_clips_to_a_frame_wise_method():
    state = VideoState()
    state.add_objects(torch.zeros(2, 3, 3), [1, 2])
    with pytest.raises(ValueError, match="expected \\[3\\]"):
        state.add_objects(torch.zeros(1, 3, 3), [4])
    method = build_method("copy-previous")
    session = VideoSession(method)
    frames = torch.rand(1, 3, 3, 8, 8)
    m1 = (torch.rand(1, 8, 8) > 0.5).float()
    m2 = torch.zeros(1, 8, 8)
    m2[0, :2, :2] = 1
    out = session.step_clip(frames, [m1, None, m2], [[1], [], [2]])
    assert out.shape == (3, 3, 8, 8)
    assert torch.all(out[:2, 2] == 0)            # object 2 unknown before its first mask
    assert torch.equal(out[2, 2], m2[0]) and torch.equal(out[1, 1], m1[0])
    assert session.frame_index == 3 and session.state.frame_index == 3
    with pytest.raises(AttributeError):          # the engine owns the frame index
        session.state.frame_index = 0

    class Incomplete(VOSMethod):
        clip_wise = True

        def step(self, state, frame, new_masks, new_ids):   # the frame-wise entry: not enough
            return frame

    with pytest.raises(TypeError, match="must implement step_clip"):
        VideoSession(Incomplete())
