"""Masks: object ids as pixel values, shown with the DAVIS colour palette.

A mask is an (H, W) uint8 array of object ids: 0 background, 1..254 objects, 255 void
("don't care", as in the DAVIS annotations). Files are 'P' (palette) PNGs; the palette is the
DAVIS one (the PASCAL VOC colour map: colour i spreads the bits of i over R, G, B from the
most significant bit down), so id 1 is (128, 0, 0), id 2 (0, 128, 0), id 3 (128, 128, 0)...
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from .errors import DataError

VOID_LABEL = 255


def davis_palette() -> np.ndarray:
    """(256, 3) uint8: the DAVIS / PASCAL VOC colour map."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette[index] = (r, g, b)
    return palette


DAVIS_PALETTE = davis_palette()

def read_mask(path: str | Path, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an id mask -> (H, W) uint8, from the forms masks come in (:func:`labels_from_image`):
    a palette ('P') PNG, a grayscale or binary one, or an RGB one in DAVIS colours.

    expected_size: (H, W) the mask must have (the frames' size), or None.
    Raises DataError for a missing or unreadable file, a colour that is no DAVIS colour, or a
    size mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"mask not found: {path}")
    from PIL import Image  # Pillow only where images are read or written
    try:
        with Image.open(path) as image:
            image.load()
            labels = labels_from_image(image, path)
    except OSError as exc:
        raise DataError(f"cannot read mask {path}: {exc}") from exc
    if expected_size is not None and labels.shape != tuple(expected_size):
        raise DataError(f"mask {path} is {labels.shape[1]}x{labels.shape[0]} (WxH) but the frames are "
                        f"{expected_size[1]}x{expected_size[0]}")
    return labels


def labels_from_image(image, path: str | Path = "mask") -> np.ndarray:
    """The ids of a mask image (a PIL image) -> (H, W) uint8:

    * palette ('P'): the pixel values are the ids (DAVIS annotations);
    * binary ('1'), or grayscale ('L', 16-bit 'I;16'/'I') holding only 0 and 255: one object,
      id 1 where the pixel is set (the mask most tools export);
    * other grayscale: the values are the ids (0..255, 255 void);
    * RGB / RGBA holding only black and white: one object, id 1 where white;
    * other RGB / RGBA: each colour mapped through the DAVIS palette (id 1 is (128, 0, 0), ...);
      a colour that is not in it is an error (alpha is ignored).
    """
    mode = image.mode
    if mode == "P":
        return np.array(image, dtype=np.uint8)
    if mode == "1":
        return np.array(image, dtype=bool).astype(np.uint8)
    if mode in ("L", "LA", "I;16", "I"):
        values = np.array(image.getchannel(0) if mode == "LA" else image)
        present = set(np.unique(values).tolist())
        if 255 in present and present <= {0, 255}:
            return (values == 255).astype(np.uint8)
        if values.min() < 0 or values.max() > 255:
            raise DataError(f"mask {path}: grayscale values {values.min()}..{values.max()} are not ids 0..255")
        return values.astype(np.uint8)
    if mode in ("RGB", "RGBA"):
        rgb = np.array(image.convert("RGB"), dtype=np.uint8)
        colours, inverse = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
        found = {tuple(int(v) for v in c) for c in colours}
        if found <= {(0, 0, 0), (255, 255, 255)}:
            return (rgb[..., 0] == 255).astype(np.uint8)
        lookup = {tuple(int(v) for v in c): i for i, c in enumerate(DAVIS_PALETTE)}
        unknown = sorted(found - set(lookup))
        if unknown:
            raise DataError(f"mask {path}: {len(unknown)} colour(s) such as {unknown[0]} are not DAVIS palette "
                            "colours; save the mask as a palette PNG of object ids, or as a 0/255 grayscale "
                            "PNG for one object")
        ids = np.array([lookup[tuple(int(v) for v in c)] for c in colours], dtype=np.uint8)
        return ids[inverse.reshape(-1)].reshape(rgb.shape[:2])
    raise DataError(f"mask {path} is a {mode!r} image; expected a palette, grayscale, binary or RGB PNG")


def object_ids(labels: np.ndarray) -> list[int]:
    """The object ids present in a mask: every value but 0 (background) and VOID_LABEL."""
    return [int(v) for v in np.unique(labels) if v not in (0, VOID_LABEL)]


def read_first_mask(path: str | Path, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """read_mask for the mask that starts a video: it must hold at least one object."""
    labels = read_mask(path, expected_size)
    if not object_ids(labels):
        raise DataError(f"mask {path} has no object: every pixel is background (0) or void ({VOID_LABEL}); "
                        "objects are the ids 1..254 of a palette PNG")
    return labels


def mask_to_image(labels: np.ndarray) -> "PIL.Image.Image":
    """(H, W) integer ids -> 'P' image with the DAVIS palette."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"mask_to_image: labels must be (H, W), got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"mask_to_image: ids must be in 0..255, got {labels.min()}..{labels.max()}")
    from PIL import Image  # Pillow only where images are read or written
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(DAVIS_PALETTE.reshape(-1).tolist())
    return image


def write_mask(path: str | Path, labels: np.ndarray) -> Path:
    """Write (H, W) ids as a DAVIS-palette PNG, atomically (temp name, then os.replace)."""
    path = Path(path)
    image = mask_to_image(labels)
    # No stale-temporary scan per mask: it lists the folder, and vos-segment writes its masks
    # into a private folder of its own (whose leftovers it removes as a whole).
    with atomic_path(path, clean_stale=False) as tmp:
        image.save(tmp, format="PNG")
    return path


def overlay(frame: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend object colours over an (H, W, 3) uint8 RGB frame where labels > 0; -> uint8 RGB."""
    out = frame.copy()
    inside = labels > 0
    # blend only the object pixels: usually a small part of the frame
    colours = DAVIS_PALETTE[labels[inside]].astype(np.float32)
    blend = frame[inside].astype(np.float32) * (1 - alpha) + colours * alpha
    out[inside] = np.clip(blend + 0.5, 0, 255).astype(np.uint8)
    return out
