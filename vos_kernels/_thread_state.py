"""A per-thread setting for the length of a block (the backend mirror of use_backend, the GPU
target the Triton launchers choose configurations for)."""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator


@contextlib.contextmanager
def thread_local_value(local: threading.local, name: str, value: Any) -> Iterator[None]:
    """Set ``local.<name>`` to `value` in this thread for the block; the outer value (None if
    there was none) comes back after it. torch.compile traces and guards on such attributes."""
    outer = getattr(local, name, None)
    setattr(local, name, value)
    try:
        yield
    finally:
        setattr(local, name, outer)
