"""The DAVIS / YouTube-VOS folder layout.

::

    <root>/JPEGImages/<resolution>/<sequence>/<frame>.jpg
    <root>/Annotations/<resolution>/<sequence>/<frame>.png   (palette PNG, ids)
    <root>/ImageSets/<year>/<split>.txt                       (optional: sequence lists)

``resolution`` is ``480p`` / ``Full-Resolution`` for DAVIS; YouTube-VOS has no resolution level
(``<root>/JPEGImages/<sequence>``), which :class:`DavisLayout` detects. Annotations may be
sparse (YouTube-VOS, the ``caps`` sample): only some frames have a PNG.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataError
from .frames import ImageFolderSource, natural_key
from .palette import read_mask


class DavisLayout:
    """A dataset in the DAVIS layout rooted at ``root``."""

    def __init__(self, root: str | Path, resolution: str | None = "480p"):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"dataset folder not found: {self.root}")
        images = self.root / "JPEGImages"
        if not images.is_dir():
            raise DataError(f"{self.root} is not in the DAVIS layout: no JPEGImages folder")
        if resolution is not None and (images / resolution).is_dir():
            self.image_root = images / resolution
            self.mask_root = self.root / "Annotations" / resolution
        else:  # YouTube-VOS: no resolution level
            self.image_root = images
            self.mask_root = self.root / "Annotations"

    def sequences(self, split: str | None = None, year: str = "2017") -> list[str]:
        """Sequence names: from ``ImageSets/<year>/<split>.txt`` if split is given, else every folder."""
        if split is not None:
            listing = self.root / "ImageSets" / year / f"{split}.txt"
            if not listing.is_file():
                raise DataError(f"sequence list not found: {listing}")
            names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
            missing = [n for n in names if not (self.image_root / n).is_dir()]
            if missing:
                raise DataError(f"{listing} lists sequences without frames: {missing[:5]}")
            return names
        return sorted((p.name for p in self.image_root.iterdir() if p.is_dir()), key=natural_key)

    def frames(self, sequence: str) -> ImageFolderSource:
        return ImageFolderSource(self.image_root / sequence)

    def annotation_paths(self, sequence: str) -> dict[str, Path]:
        """{frame name: mask path} for the frames of ``sequence`` that have a mask (may be sparse)."""
        folder = self.mask_root / sequence
        if not folder.is_dir():
            raise DataError(f"annotation folder not found: {folder}")
        return {p.stem: p for p in sorted(folder.glob("*.png"), key=lambda p: natural_key(p.name))}

    def read_annotations(self, sequence: str) -> dict[str, np.ndarray]:
        """{frame name: (H, W) uint8 ids} for every annotated frame."""
        return {name: read_mask(path) for name, path in self.annotation_paths(sequence).items()}


def read_mask_folder(folder: str | Path, frame_names: list[str] | None = None,
                     expected_size: tuple[int, int] | None = None) -> dict[str, Path]:
    """{frame name: path} of the PNG masks in ``folder``; checks names against ``frame_names``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"mask folder not found: {folder}")
    paths = {p.stem: p for p in sorted(folder.glob("*.png"), key=lambda p: natural_key(p.name))}
    if not paths:
        raise DataError(f"no PNG masks in {folder}")
    if frame_names is not None:
        unknown = sorted(set(paths) - set(frame_names), key=natural_key)
        if unknown:
            raise DataError(f"masks in {folder} name frames that do not exist: {unknown[:5]}")
    if expected_size is not None:
        for path in paths.values():
            read_mask(path, expected_size)
    return paths
