"""The inference engine: object ids, objects that appear later, clip-wise methods, precision."""
import numpy as np
import pytest
import torch

from vos_models import VOSMethod, build_method
from vos_models.data.synthetic import SyntheticClipGenerator
from vos_models.engine.inference import InferenceEngine
from vos_models.engine.interface import grow_objects, merge_new_masks
from vos_models.methods.copy_previous import PreviousOutputState

torch.set_num_threads(1)


def synthetic_video(seed=0, frames=8, size=(32, 40), entering=1.0, objects=3):
    gen = SyntheticClipGenerator(*size, frames, min_objects=objects, max_objects=objects,
                                 entering_probability=entering, seed=seed)
    for i in range(50):
        clip = gen.clip(i)
        if clip.num_objects >= 2 and clip.first_frame.max() > 0:
            break
    rgb = (clip.frames.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    names = [f"{t:05d}" for t in range(frames)]
    return clip, list(zip(names, rgb)), names


class Recorder(VOSMethod):
    """Copies the previous output, and records what the engine passed."""

    name = "recorder"
    state_type = PreviousOutputState

    def __init__(self, clip_wise=False, clip_length=3):
        super().__init__()
        self.clip_wise = clip_wise
        self.clip_length = clip_length
        self.calls = []

    def step(self, state, frame, new_masks, new_ids):
        assert frame.shape[:2] == (1, 3) and frame.dtype == torch.float32 and 0 <= frame.min() <= frame.max() <= 1
        self.calls.append(("step", list(new_ids)))
        state.add_objects(new_masks, new_ids)
        state.previous = merge_new_masks(state.previous, new_masks, new_ids, state.num_objects)
        return state.previous

    def step_clip(self, state, frames, new_masks, new_ids):
        self.calls.append(("clip", frames.shape[1]))
        outputs = [self.step(state, frames[:, i], new_masks[i], new_ids[i]) for i in range(frames.shape[1])]
        return torch.cat([grow_objects(p, state.num_objects) for p in outputs])


def test_objects_appearing_later_and_user_ids_are_mapped_back():
    clip, frames, names = synthetic_video()
    # user ids 7, 3, 200 for the synthetic objects 1, 2, 3 (arbitrary, not in order)
    user = np.array([0, 7, 3, 200] + [0] * 252, np.uint8)
    labels = user[clip.labels.numpy()]
    masks = {}
    for obj, start in enumerate(clip.first_frame.tolist(), start=1):
        masks.setdefault(names[start], np.zeros_like(labels[0]))
        masks[names[start]][labels[start] == user[obj]] = user[obj]
    method = Recorder()
    results = list(InferenceEngine(method).segment(frames, masks))
    assert [r.name for r in results] == names
    starts = sorted(set(clip.first_frame.tolist()))
    # the method saw each object once, at its first frame, numbered 1..O in order of appearance
    seen = [ids for kind, ids in method.calls if ids]
    assert sum(len(i) for i in seen) == clip.num_objects
    assert [i for ids in seen for i in ids] == list(range(1, clip.num_objects + 1))
    for start in starts:
        given = masks[names[start]]
        got = results[start].labels
        assert np.array_equal(got[given > 0], given[given > 0])  # given masks reproduced, with user ids
    assert set(np.unique(results[-1].labels)) <= {0, 7, 3, 200}


def test_frames_before_the_first_mask_are_background_and_later_masks_of_known_objects_correct_them():
    clip, frames, names = synthetic_video(entering=0.0, objects=1)
    first = clip.labels[0].numpy()
    method = Recorder()
    masks = {names[2]: first, names[5]: np.zeros_like(first)}
    masks[names[5]][:4, :4] = 1  # object 1 again: a correction of object 1, not a new object
    results = list(InferenceEngine(method, keep_probabilities=True).segment(frames, masks))
    assert not results[0].labels.any() and not results[1].labels.any()
    assert results[0].probabilities.shape == (1, *first.shape)
    assert len(method.calls) == len(names) - 2 and method.calls[0] == ("step", [1])
    assert method.calls[3] == ("step", [1])                      # frame 5: engine id 1 again
    assert np.array_equal(results[5].labels, masks[names[5]])  # the output is the correction
    assert np.array_equal(results[6].labels, masks[names[5]])  # and what the method carries on from
    assert results[3].probabilities.shape == (2, *first.shape)


def test_clip_wise_methods_get_clips_including_a_short_last_one():
    clip, frames, names = synthetic_video(frames=8, entering=1.0)
    masks = {names[s]: np.where(clip.labels[s].numpy() == o, o, 0).astype(np.uint8)
             for o, s in enumerate(clip.first_frame.tolist(), start=1) if s == 0}
    method = Recorder(clip_wise=True, clip_length=3)
    results = list(InferenceEngine(method).segment(frames, masks))
    assert [c for c in method.calls if c[0] == "clip"] == [("clip", 3), ("clip", 3), ("clip", 2)]
    assert len(results) == 8 and [r.index for r in results] == list(range(8))


def test_copy_previous_keeps_one_map_whatever_the_video_length():
    method = build_method("copy-previous")
    engine = InferenceEngine(method)
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 4:8] = 1
    frames = ((f"{i:05d}", np.full((16, 16, 3), i % 255, np.uint8)) for i in range(300))
    state_sizes = []
    original = method.step

    def spy(state, *args):
        out = original(state, *args)
        state_sizes.append(sum(v.numel() for v in vars(state).values() if torch.is_tensor(v)))
        return out

    method.step = spy
    for result in engine.segment(frames, {"00000": mask}):
        assert np.array_equal(result.labels, mask)
    assert engine.last_stats.frames == 300 and max(state_sizes) == 2 * 16 * 16


def test_precision_options_and_errors():
    method = build_method("tiny-prop", channels=4)
    with pytest.raises(ValueError, match="float16 autocast needs a GPU"):
        InferenceEngine(method, precision="float16")
    with pytest.raises(ValueError, match="precision must be one of"):
        InferenceEngine(method, precision="int8")
    clip, frames, names = synthetic_video(entering=0.0, objects=2)
    engine = InferenceEngine(method, precision="bfloat16")
    results = list(engine.segment(frames, {names[0]: clip.labels[0].numpy()}))
    assert len(results) == len(names) and engine.last_stats.model_fps > 0
    bad = np.zeros((5, 5), np.uint8)
    with pytest.raises(Exception, match="mask for frame 00000 is 5x5"):
        list(InferenceEngine(method).segment(frames, {names[0]: bad}))


@pytest.mark.slow
def test_compile_option_gives_the_same_labels():
    clip, frames, names = synthetic_video(entering=0.0, objects=2)
    torch.manual_seed(0)
    method = build_method("tiny-prop", channels=4)
    masks = {names[0]: clip.labels[0].numpy()}
    eager = [r.labels for r in InferenceEngine(method).segment(frames, masks)]
    compiled = [r.labels for r in InferenceEngine(method, compile=True).segment(frames, masks)]
    # Inductor may reorder float reductions (vector widths differ between CPUs), so a pixel whose
    # two best labels are within rounding of each other may flip; anything more is a bug.
    assert len(eager) == len(compiled)
    for a, b in zip(eager, compiled):
        assert a.shape == b.shape and np.mean(a != b) <= 1e-3


def test_conformance_checks_pass_for_the_builtin_models_and_catch_broken_ones():
    from vos_models.engine.conformance import check_bounded_memory, check_vos_method

    check_vos_method(build_method("copy-previous"), height=32, width=40)
    check_vos_method(build_method("tiny-prop", channels=4), height=32, width=40)
    check_vos_method(Recorder(clip_wise=True, clip_length=3), height=32, width=40)

    class Hoarder(Recorder):  # keeps every frame: unbounded memory
        def step(self, state, frame, new_masks, new_ids):
            state.__dict__.setdefault("frames", []).append(frame)
            return super().step(state, frame, new_masks, new_ids)

    with pytest.raises(AssertionError, match="keeps growing"):
        check_bounded_memory(Hoarder(), height=16, width=16, frames=10)

    class IgnoresMasks(Recorder):  # never shows the given masks
        def step(self, state, frame, new_masks, new_ids):
            out = super().step(state, frame, new_masks, new_ids)
            return torch.cat([torch.ones_like(out[:, :1]), torch.zeros_like(out[:, 1:])], 1)

    with pytest.raises(AssertionError, match="output differs from them"):
        check_vos_method(IgnoresMasks(), height=16, width=16)


def test_progress_counts_frames_processed_not_decoded_ahead(monkeypatch):
    import tqdm as tqdm_module

    updates = []

    class Bar:
        def __init__(self, total=None, **kwargs):
            self.n, self.total = 0, total

        def update(self, n):
            self.n += n
            updates.append(self.n)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(tqdm_module, "tqdm", Bar)
    clip, frames, names = synthetic_video(entering=0.0, objects=1)
    engine = InferenceEngine(build_method("copy-previous"), prefetch=4)
    seen = []
    for result in engine.segment(frames, {names[0]: clip.labels[0].numpy()}, progress=True, total=len(names)):
        seen.append(result.name)
        assert updates[-1] == len(seen)      # the bar moved once per frame handed out, no further
    assert updates == list(range(1, len(names) + 1))


def test_channel_labels_is_the_first_argmax_of_the_channels():
    from vos_models.engine.objects import channel_labels

    generator = torch.Generator().manual_seed(0)
    for channels in (1, 2, 3, 5):
        # quantised values: many ties, where the first channel must win (torch.argmax's rule)
        prob = torch.randint(0, 4, (channels, 7, 9), generator=generator).float() / 4
        labels = channel_labels(prob)
        assert labels.dtype == np.uint8 and labels.shape == (7, 9)
        np.testing.assert_array_equal(labels, prob.argmax(0).numpy())
    strided = torch.rand(3, 9, 7, generator=generator).transpose(1, 2)  # non-contiguous input
    np.testing.assert_array_equal(channel_labels(strided), strided.argmax(0).numpy())
