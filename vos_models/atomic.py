"""Atomic file output: write to a temporary name in the target folder, then ``os.replace``.

A reader never sees a half-written file, and a crash or kill leaves either the old file or
the new one (plus at worst a hidden ``.<name>.*.tmp`` file, which is removed on errors).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on normal exit it is renamed onto ``path``.

    fsync: flush the file to disk before the rename (for checkpoints that must survive a
    power loss, not only a process kill).
    """
    path = Path(path)
    folder = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    # mkstemp creates 0600; give the file the permissions a plain open() would (0666 - umask)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield Path(tmp)
        if fsync:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
