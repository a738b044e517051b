"""Training datasets: synthetic clips, static images turned into clips, and real videos.

Every item is a dict (the batch format of :meth:`VOSMethod.training_loss` once collated):

- ``"frames"``: (T, 3, H, W) float RGB in [0, 1]
- ``"masks"``: (T, O, H, W) float {0, 1}, O = ``max_objects`` (objects past num_objects are empty)
- ``"num_objects"``: () long

Randomness is a function of (seed, epoch, index) only (``set_epoch`` picks the epoch), so an
item is the same whichever worker or process draws it, and a resumed run sees the data the
uninterrupted run would have seen.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .davis import DavisLayout
from ..errors import DataError, VOSInputError
from .frames import IMAGE_EXTENSIONS, natural_key, read_image
from .palette import VOID_LABEL, read_mask
from .synthetic import SyntheticClipGenerator, _clip_seed
from .warp import colour_jitter, random_affine, warp, warp_labels


def labels_to_item(frames: Tensor, labels: Tensor, max_objects: int) -> dict:
    """(T, 3, H, W) frames and (T, H, W) ids 1..K -> the item dict (objects past max_objects dropped)."""
    count = int(min(int(labels.max()) if labels.numel() else 0, max_objects))
    ids = torch.arange(1, max_objects + 1, dtype=labels.dtype).view(1, -1, 1, 1)
    masks = (labels.unsqueeze(1) == ids).float()
    return {"frames": frames.float(), "masks": masks, "num_objects": torch.tensor(count, dtype=torch.long)}


class _EpochSeeded(Dataset):
    """Base: per-item generators seeded from (seed, epoch, index)."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def generator(self, index: int) -> torch.Generator:
        return torch.Generator().manual_seed(_clip_seed(self.seed * 1_000_003 + self.epoch, index))


class SyntheticClipDataset(_EpochSeeded):
    """``length`` synthetic clips per epoch (see :mod:`.synthetic`); new clips every epoch."""

    def __init__(self, length: int = 1000, *, num_frames: int = 3, size: tuple[int, int] = (64, 64),
                 max_objects: int = 2, min_objects: int = 1, entering_probability: float = 0.0, seed: int = 0):
        super().__init__(seed)
        if length < 1:
            raise VOSInputError(f"SyntheticClipDataset: length must be >= 1, got {length}")
        self.length = length
        self.max_objects = max_objects
        self.options = dict(height=size[0], width=size[1], num_frames=num_frames, min_objects=min_objects,
                            max_objects=max_objects, entering_probability=entering_probability)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        generator = SyntheticClipGenerator(**self.options, seed=self.seed * 1_000_003 + self.epoch)
        clip = generator.clip(index)
        return labels_to_item(clip.frames, clip.labels, self.max_objects)


def static_image_to_clip(image: Tensor, labels: Tensor, num_frames: int, generator: torch.Generator, *,
                         size: tuple[int, int] | None = None, max_rotation: float = 20.0,
                         scale: tuple[float, float] = (0.9, 1.1), max_shear: float = 10.0,
                         max_translation: float = 0.1, jitter: float = 0.1) -> tuple[Tensor, Tensor]:
    """One image + its id mask -> a clip by random affine warps and colour jitter per frame.

    The pre-training recipe of RGMP / STM / STCN: each frame is the image under its own random
    rotation, scale, shear and translation (the same warp for the mask, nearest-sampled), so
    objects move and deform between frames. image (3, H, W) in [0, 1], labels (H, W) ids;
    returns frames (T, 3, h, w) and labels (T, h, w) at ``size`` (default the image's).
    """
    if image.dim() != 3 or image.shape[0] != 3 or labels.shape != image.shape[1:]:
        raise ValueError(f"static_image_to_clip: image (3, H, W) and labels (H, W) must agree, got "
                         f"{tuple(image.shape)} and {tuple(labels.shape)}")
    if size is not None and tuple(size) != tuple(image.shape[1:]):
        image = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0]
        labels = F.interpolate(labels[None, None].float(), size=size, mode="nearest")[0, 0].to(labels.dtype)
    matrices = torch.stack([random_affine(generator, max_rotation=max_rotation, scale=scale, max_shear=max_shear,
                                          max_translation=max_translation) for _ in range(num_frames)])
    frames = warp(image.float().unsqueeze(0).expand(num_frames, -1, -1, -1), matrices)
    clip_labels = warp_labels(labels.unsqueeze(0).expand(num_frames, -1, -1).long(), matrices)
    return colour_jitter(frames, generator, jitter), clip_labels


class StaticImageClipDataset(_EpochSeeded):
    """Image + mask pairs (``images/<name>.jpg`` with ``masks/<name>.png``) as synthetic clips."""

    def __init__(self, images: str | Path, masks: str | Path, *, num_frames: int = 3, size: tuple[int, int] = (240, 240),
                 max_objects: int = 3, seed: int = 0):
        super().__init__(seed)
        images, masks = Path(images), Path(masks)
        if not images.is_dir() or not masks.is_dir():
            raise DataError(f"StaticImageClipDataset: need folders {images} and {masks}")
        self.pairs = []
        for image in sorted(images.iterdir(), key=lambda p: natural_key(p.name)):
            mask = masks / f"{image.stem}.png"
            if image.suffix.lower() in IMAGE_EXTENSIONS and mask.is_file():
                self.pairs.append((image, mask))
        if not self.pairs:
            raise DataError(f"StaticImageClipDataset: no image in {images} has a mask <name>.png in {masks}")
        self.num_frames, self.size, self.max_objects = num_frames, tuple(size), max_objects

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        image_path, mask_path = self.pairs[index]
        image = torch.from_numpy(read_image(image_path)).permute(2, 0, 1).float() / 255
        labels = _compact_ids(torch.from_numpy(read_mask(mask_path, image.shape[1:]).astype(np.int64)))
        frames, clip_labels = static_image_to_clip(image, labels, self.num_frames, self.generator(index), size=self.size)
        return labels_to_item(frames, clip_labels, self.max_objects)


def _compact_ids(labels: Tensor) -> Tensor:
    """Renumber the ids present (void 255 -> 0) as 1..K in increasing order."""
    labels = labels.clone()
    labels[labels == VOID_LABEL] = 0
    present = [int(v) for v in torch.unique(labels) if v != 0]
    out = torch.zeros_like(labels)
    for new, old in enumerate(present, start=1):
        out[labels == old] = new
    return out


class VideoClipDataset(_EpochSeeded):
    """T-frame clips from DAVIS- or YouTube-VOS-layout videos (annotated frames only, so sparse
    annotations work: YouTube-VOS annotates every 5th frame, and ``max_skip`` counts annotated
    frames).

    Frames are picked in order with random gaps of 1..max_skip between annotated frames, from a
    first frame that shows at least one object; the clip is resized so its short side is
    ``size``'s and randomly cropped to ``size`` (up to ``crop_tries`` crops, keeping the first
    that leaves an object of the first frame in view, else the whole frame resized). The
    objects visible in the first frame of the clip (at most max_objects, chosen at random)
    are the targets, renumbered 1..O; other objects become background.
    """

    def __init__(self, root: str | Path, sequences: Sequence[str] | None = None, *, num_frames: int = 3,
                 size: tuple[int, int] = (240, 240), max_skip: int = 5, max_objects: int = 3,
                 resolution: str = "480p", seed: int = 0, crop_tries: int = 5):
        super().__init__(seed)
        self.layout = DavisLayout(root, resolution)
        names = list(sequences) if sequences is not None else self.layout.sequences()
        self.videos = []
        for name in names:
            frames = {p.stem: p for p in self.layout.frames(name).files}
            annotated = [n for n in self.layout.annotation_paths(name) if n in frames]
            if len(annotated) >= num_frames:
                self.videos.append((name, [(frames[n], self.layout.mask_root / name / f"{n}.png") for n in annotated]))
        if not self.videos:
            raise DataError(f"VideoClipDataset: no sequence in {root} has {num_frames} annotated frames")
        self.num_frames, self.size, self.max_skip, self.max_objects = num_frames, tuple(size), max_skip, max_objects
        self.crop_tries = crop_tries

    def __len__(self) -> int:
        return len(self.videos)

    def _first_frame(self, name: str, pairs: list, g: torch.Generator) -> tuple[int, np.ndarray]:
        """A random start index whose mask shows an object (and that mask), so the clip has a target."""
        last_start = len(pairs) - self.num_frames
        drawn = int(torch.randint(0, last_start + 1, (1,), generator=g))
        # the drawn start first, then the following ones (wrapping): the first with an object wins
        for start in [(drawn + k) % (last_start + 1) for k in range(last_start + 1)]:
            labels = read_mask(pairs[start][1])
            if np.any((labels != 0) & (labels != VOID_LABEL)):
                return start, labels
        raise DataError(f"VideoClipDataset: video {name!r} has no annotated frame with an object that can start "
                        f"a {self.num_frames}-frame clip")

    def __getitem__(self, index: int) -> dict:
        g = self.generator(index)
        name, pairs = self.videos[index]
        start, first_labels = self._first_frame(name, pairs, g)
        picks = [start]
        for _ in range(self.num_frames - 1):
            room = len(pairs) - 1 - picks[-1] - (self.num_frames - len(picks) - 1)
            picks.append(picks[-1] + int(torch.randint(1, max(1, min(self.max_skip, room)) + 1, (1,), generator=g)))
        images = torch.stack([torch.from_numpy(read_image(pairs[i][0])).permute(2, 0, 1) for i in picks]).float() / 255
        first = first_labels if first_labels.shape == tuple(images.shape[2:]) else read_mask(pairs[start][1], images.shape[2:])
        labels = torch.stack([torch.from_numpy(first.astype(np.int64))]
                             + [torch.from_numpy(read_mask(pairs[i][1], images.shape[2:]).astype(np.int64)) for i in picks[1:]])
        for _ in range(max(1, self.crop_tries)):
            frames, cropped = _resize_crop(images, labels, self.size, g)
            visible = _object_ids(cropped[0])
            if visible:
                break
        else:  # every crop missed the objects: use the whole frame
            frames = F.interpolate(images, size=self.size, mode="bilinear", align_corners=False)
            cropped = F.interpolate(labels[:, None].float(), size=self.size, mode="nearest")[:, 0].long()
            visible = _object_ids(cropped[0])
        chosen = [visible[i] for i in torch.randperm(len(visible), generator=g)[: self.max_objects].tolist()]
        relabelled = torch.zeros_like(cropped)
        for new, old in enumerate(chosen, start=1):
            relabelled[cropped == old] = new
        return labels_to_item(frames, relabelled, self.max_objects)


def _object_ids(labels: Tensor) -> list[int]:
    """The object ids present in an (H, W) id map (not background, not void)."""
    return [int(v) for v in torch.unique(labels) if v not in (0, VOID_LABEL)]


def _resize_crop(frames: Tensor, labels: Tensor, size: tuple[int, int], g: torch.Generator) -> tuple[Tensor, Tensor]:
    h, w = frames.shape[2:]
    scale = max(size[0] / h, size[1] / w)
    new = (max(size[0], round(h * scale)), max(size[1], round(w * scale)))
    frames = F.interpolate(frames, size=new, mode="bilinear", align_corners=False)
    labels = F.interpolate(labels[:, None].float(), size=new, mode="nearest")[:, 0].long()
    y = int(torch.randint(0, new[0] - size[0] + 1, (1,), generator=g))
    x = int(torch.randint(0, new[1] - size[1] + 1, (1,), generator=g))
    return frames[:, :, y:y + size[0], x:x + size[1]], labels[:, y:y + size[0], x:x + size[1]]
