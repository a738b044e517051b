"""Frame decoding (and, on CUDA, the upload) overlapped with the model: a producer thread.

``prefetched(items, depth, prepare)`` iterates ``items`` in a background thread, applies
``prepare`` to each item there, and hands the results back in order through a queue of at
most ``depth`` entries, so at most ``depth`` prepared frames wait at any time (bounded memory
whatever the video length). Decoding (PIL / OpenCV release the GIL), the uint8 -> float
conversion and, on CUDA, the pinned-memory upload on a side stream run while the model
computes the previous frame.

Errors raised by the producer (a corrupt frame, a mask of the wrong size) are re-raised in the
consumer at the position where they occurred. Closing the consumer early (``break``) stops the
producer: nothing keeps running after the generator is closed.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_DONE = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def prefetched(items: Iterable[T], depth: int, prepare: Callable[[T], R]) -> Iterator[R]:
    """``prepare(item)`` for every item, computed ``depth`` items ahead in a background thread."""
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"prefetched: depth must be an int >= 1, got {depth!r}")
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        # A bounded put that gives up when the consumer went away (no thread left blocked).
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set() or not put(prepare(item)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Failure(exc))
            return
        put(_DONE)

    worker = threading.Thread(target=produce, name="vos-frame-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            entry = slots.get()
            if entry is _DONE:
                return
            if isinstance(entry, _Failure):
                raise entry.error
            yield entry
    finally:
        stop.set()
        worker.join()
