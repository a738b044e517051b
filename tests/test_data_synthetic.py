"""Synthetic clips, static-image clips, training datasets and the resumable sampler."""
import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import require_shared
from vos_models.data.datasets import (StaticImageClipDataset, SyntheticClipDataset, VideoClipDataset,
                                      static_image_to_clip)
from vos_models.data.palette import write_mask
from vos_models.data.synthetic import SyntheticClipGenerator
from vos_models.training.sampler import ResumableSampler

torch.set_num_threads(1)


def test_synthetic_clips_are_seeded_varied_and_well_formed():
    gen = SyntheticClipGenerator(40, 56, 6, min_objects=2, max_objects=4, entering_probability=0.7, seed=3)
    a, b = gen.clip(5), SyntheticClipGenerator(40, 56, 6, min_objects=2, max_objects=4,
                                                entering_probability=0.7, seed=3).clip(5)
    assert torch.equal(a.frames, b.frames) and torch.equal(a.labels, b.labels)
    assert not torch.equal(gen.clip(6).frames, a.frames)
    assert not torch.equal(SyntheticClipGenerator(40, 56, 6, seed=4).clip(5).frames, a.frames)
    assert a.frames.shape == (6, 3, 40, 56) and a.frames.dtype == torch.float32
    assert 0 <= a.frames.min() and a.frames.max() <= 1
    counts, entering, moved = [], 0, 0
    for i in range(12):
        clip = gen.clip(i)
        ids = sorted(set(clip.labels.unique().tolist()) - {0})
        assert ids == list(range(1, clip.num_objects + 1))  # ids compact 1..O
        for obj, start in enumerate(clip.first_frame.tolist(), start=1):
            assert (clip.labels[start] == obj).any()          # visible on its first frame
            assert not (clip.labels[:start] == obj).any()      # absent before
            entering += start > 0
        assert clip.first_frame[0] == 0
        moved += not torch.equal(clip.labels[0], clip.labels[-1])
        counts.append(clip.num_objects)
    assert entering > 0 and moved == 12 and len(set(counts)) > 1
    masks = a.masks(6)
    assert masks.shape == (6, 6, 40, 56) and torch.equal(masks.sum(1) > 0, a.labels > 0)


def test_synthetic_any_resolution():
    for h, w in ((8, 8), (17, 93), (120, 64)):
        clip = SyntheticClipGenerator(h, w, 2, seed=1).clip(0)
        assert clip.frames.shape == (2, 3, h, w) and clip.num_objects >= 1
    with pytest.raises(ValueError, match="max_objects"):
        SyntheticClipGenerator(16, 16, 2, min_objects=3, max_objects=2)


def test_static_image_to_clip_moves_image_and_mask_together():
    g = torch.Generator().manual_seed(0)
    image = torch.zeros(3, 64, 64)
    labels = torch.zeros(64, 64, dtype=torch.long)
    image[0, 20:40, 10:30] = 1.0
    labels[20:40, 10:30] = 1
    frames, clip_labels = static_image_to_clip(image, labels, 4, g, jitter=0.0)
    assert frames.shape == (4, 3, 64, 64) and clip_labels.shape == (4, 64, 64)
    assert not torch.equal(clip_labels[0], clip_labels[1])
    for t in range(4):  # the red square and the mask stay aligned after each warp
        red = frames[t, 0] > 0.5
        agree = (red == (clip_labels[t] == 1)).float().mean()
        assert agree > 0.97


def test_datasets_items_and_epochs(tmp_path):
    ds = SyntheticClipDataset(4, num_frames=3, size=(24, 24), max_objects=3, seed=1)
    item = ds[0]
    assert item["frames"].shape == (3, 3, 24, 24) and item["masks"].shape == (3, 3, 24, 24)
    assert 1 <= int(item["num_objects"]) <= 3
    assert torch.equal(ds[0]["frames"], item["frames"])
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["frames"], item["frames"])
    # static image + mask pairs
    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    Image.fromarray((np.random.default_rng(0).random((30, 40, 3)) * 255).astype(np.uint8)).save(tmp_path / "img" / "a.jpg")
    labels = np.zeros((30, 40), np.uint8)
    labels[5:15, 5:20] = 4
    labels[20:28, 25:35] = 9
    write_mask(tmp_path / "msk" / "a.png", labels)
    static = StaticImageClipDataset(tmp_path / "img", tmp_path / "msk", num_frames=2, size=(32, 32), max_objects=3)
    item = static[0]
    assert item["frames"].shape == (2, 3, 32, 32) and int(item["num_objects"]) == 2  # ids 4, 9 -> 1, 2


def test_video_clip_dataset_on_the_sample():
    root = require_shared("data", "davis-sample")
    ds = VideoClipDataset(root, ["blackswan", "caps"], num_frames=3, size=(48, 48), max_objects=2)
    assert len(ds) == 2  # caps has 5 annotated frames: enough for 3-frame clips
    for i in range(2):
        item = ds[i]
        assert item["frames"].shape == (3, 3, 48, 48) and item["masks"].shape == (3, 2, 48, 48)
        assert int(item["num_objects"]) >= 1 and item["masks"][0, 0].sum() > 0


def test_resumable_sampler_partitions_and_resumes():
    samplers = [ResumableSampler(11, num_replicas=2, rank=r, seed=5) for r in range(2)]
    for s in samplers:
        s.set_epoch(3)
    shares = [list(s) for s in samplers]
    assert len(shares[0]) == len(shares[1]) == 5 and not set(shares[0]) & set(shares[1])
    samplers[0].set_epoch(3, start=2)
    assert list(samplers[0]) == shares[0][2:] and len(samplers[0]) == 3
    samplers[0].set_epoch(4)
    assert list(samplers[0]) != shares[0]
