"""Atomic file output: write to a temporary name in the target folder, then ``os.replace``.

A reader never sees a half-written file, and a crash or kill leaves either the old file or
the new one. Temporaries are named after the process that writes them (``.<name>.<pid>.*.tmp``):
they are removed on errors, and one left by a killed process is removed by the next write of
the same file (`remove_stale_temporaries`), never one of a process that still runs.
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(folder: str | Path, prefix: str) -> list[Path]:
    """Remove the entries of `folder` named ``<prefix><pid><sep>...`` (sep '.' or '-') whose
    process no longer runs: temporaries of a killed writer. Returns what was removed."""
    removed = []
    for entry in Path(folder).glob(glob.escape(prefix) + "*"):
        token = entry.name[len(prefix):].replace("-", ".").split(".", 1)[0]
        if not token.isdigit() or int(token) == os.getpid() or _process_alive(int(token)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        removed.append(entry)
    return removed


def make_private_dir(folder: str | Path, prefix: str) -> Path:
    """A new folder ``<prefix><pid>-<random>`` in `folder` with the permissions a plain mkdir
    would give (0777 - umask; tempfile.mkdtemp alone makes it 0700)."""
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=folder))
    os.chmod(path, 0o777 & ~_umask())
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, *, fsync: bool = False, clean_stale: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on normal exit it is renamed onto ``path``.

    fsync: flush the file to disk before the rename (for checkpoints that must survive a
    power loss, not only a process kill).
        clean_stale: first remove this file's temporaries left by killed writers; it lists the
    folder, so a caller writing many files into one folder it owns turns it off.
    """
    path = Path(path)
    folder = path.parent
    if clean_stale:
        remove_stale_temporaries(folder, f".{path.name}.")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=folder)
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
