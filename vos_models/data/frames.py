"""Frame sources that stream a video one frame at a time: a folder of images or a video file.

Both yield ``(name, frame)`` with ``frame`` an (H, W, 3) uint8 RGB array, decoding one frame
per step so a long video never sits in memory. ``name`` is the image's stem (``00017``) or, for
a video file, the zero-padded frame index (``00017``), which is also the name of the mask PNG
written for it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


def natural_key(text: str) -> list:
    """Sort key that orders 'frame2' before 'frame10'."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _import_cv2():
    # OpenCV and its FFmpeg backend print to stderr on every failed open; the callers report
    # failures themselves, in one line.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DataError("reading video files needs OpenCV: pip install opencv-python-headless") from exc
    return cv2


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file fully -> (H, W, 3) uint8 RGB; DataError if missing or corrupt."""
    path = Path(path)
    from PIL import Image  # Pillow only where images are read or written
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated or corrupt file fails here, not later
            return np.array(image.convert("RGB"))
    except FileNotFoundError as exc:
        raise DataError(f"frame not found: {path}") from exc
    except (OSError, SyntaxError) as exc:
        raise DataError(f"corrupt or unreadable frame {path}: {exc}") from exc


class FrameSource:
    """A video as a stream of (name, (H, W, 3) uint8 RGB) pairs."""

    path: Path
    names: list[str]

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of every frame."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        raise NotImplementedError

    @property
    def fps(self) -> float | None:
        return None


class ImageFolderSource(FrameSource):
    """Frames stored as images in one folder (DAVIS ``JPEGImages/480p/<seq>``), natural order."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder)
        if not self.path.is_dir():
            raise DataError(f"frame folder not found: {self.path}")
        self.files = sorted((p for p in self.path.iterdir()
                             if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")),
                            key=lambda p: natural_key(p.name))
        if not self.files:
            raise DataError(f"no image frames ({', '.join(IMAGE_EXTENSIONS)}) in {self.path}")
        self.names = [p.stem for p in self.files]
        if len(set(self.names)) != len(self.names):
            raise DataError(f"{self.path} holds two frames with the same name and different extensions")
        self._size: tuple[int, int] | None = None

    @property
    def size(self) -> tuple[int, int]:
        if self._size is None:
            from PIL import Image  # Pillow only where images are read or written
            try:
                with Image.open(self.files[0]) as image:
                    self._size = (image.height, image.width)
            except OSError as exc:
                raise DataError(f"corrupt or unreadable frame {self.files[0]}: {exc}") from exc
        return self._size

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        expected = self.size
        for name, path in zip(self.names, self.files):
            frame = read_image(path)
            if frame.shape[:2] != expected:
                raise DataError(f"frame {path} is {frame.shape[1]}x{frame.shape[0]} but the first frame is "
                                f"{expected[1]}x{expected[0]}")
            yield name, frame

    def check_readable(self) -> None:
        """Decode every frame once (to fail before any output is written); streams, keeps none."""
        for _ in self:
            pass


class VideoFileSource(FrameSource):
    """Frames decoded from a video file with OpenCV, one at a time."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"video file not found: {self.path}")
        cv2 = _import_cv2()
        capture = cv2.VideoCapture(str(self.path))
        try:
            if not capture.isOpened():
                raise DataError(f"video {self.path} cannot be opened (empty, corrupt or an unsupported codec)")
            ok, first = capture.read()
            if not ok or first is None:
                raise DataError(f"video {self.path} holds no frames")
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
            fps = capture.get(cv2.CAP_PROP_FPS)
        finally:
            capture.release()
        self._size = (int(first.shape[0]), int(first.shape[1]))
        self._fps = float(fps) if fps and fps > 0 else None
        # Containers can misreport the count; iteration stops at the true end and names are
        # indices, so this only sizes progress bars.
        self.names = [f"{i:05d}" for i in range(max(count, 1))]

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    @property
    def fps(self) -> float | None:
        return self._fps

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        cv2 = _import_cv2()
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            raise DataError(f"video {self.path} cannot be opened")
        try:
            index = 0
            while True:
                ok, bgr = capture.read()
                if not ok or bgr is None:
                    break
                if bgr.shape[:2] != self._size:
                    raise DataError(f"video {self.path}: frame {index} changes size to {bgr.shape[1]}x{bgr.shape[0]}")
                yield f"{index:05d}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                index += 1
            if index == 0:
                raise DataError(f"video {self.path} holds no frames")
            self.names = [f"{i:05d}" for i in range(index)]
        finally:
            capture.release()


def open_frames(path: str | Path) -> FrameSource:
    """A folder of images or a video file -> FrameSource (DataError if neither)."""
    path = Path(path)
    if path.is_dir():
        return ImageFolderSource(path)
    if path.is_file():
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            raise DataError(f"{path} is a single image; give the folder of frames or a video file")
        return VideoFileSource(path)
    raise DataError(f"input not found: {path} (expected a folder of frames or a video file)")


class VideoWriter:
    """Write RGB frames to a video file atomically: frames go to a temporary file that is
    renamed onto ``path`` by :meth:`close` (``abort`` removes it)."""

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int]):
        cv2 = _import_cv2()
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        fourcc = {".avi": "MJPG"}.get(suffix, "mp4v")
        self._tmp = self.path.with_name(f".{self.path.stem}.partial{suffix}")
        self._cv2 = cv2
        self._writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*fourcc), float(fps),
                                       (int(size[1]), int(size[0])))
        if not self._writer.isOpened():
            raise DataError(f"cannot write video {self.path} (codec {fourcc} unavailable or folder not writable)")

    def write(self, rgb: np.ndarray) -> None:
        self._writer.write(self._cv2.cvtColor(rgb, self._cv2.COLOR_RGB2BGR))

    def close(self) -> Path:
        self._writer.release()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        self._writer.release()
        if self._tmp.exists():
            self._tmp.unlink()
