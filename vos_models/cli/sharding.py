"""Split a dataset's sequences across processes: ``--shard I/N`` or torchrun's environment.

Rank ``I`` of ``N`` takes the sequences ``names[I::N]`` (every N-th one, in the dataset's order),
so the ranks cover every sequence exactly once and each sequence is segmented by one process,
from its first frame, exactly as one process would segment it: the union of the ranks'
results equals a single process's run. Under ``torchrun`` the shard comes from ``RANK`` and
``WORLD_SIZE`` (no process group is needed: the ranks share nothing but the output folder,
where each writes its own sequences), and a GPU run uses ``cuda:LOCAL_RANK``.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence

import torch

from ..errors import VOSInputError


def shard_argument(text: str) -> tuple[int, int]:
    """``I/N`` with 0 <= I < N -> (I, N)."""
    index, sep, count = text.partition("/")
    try:
        shard = int(index), int(count)
    except ValueError:
        shard = None
    if not sep or shard is None or shard[1] < 1 or not 0 <= shard[0] < shard[1]:
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N (e.g. 0/2), got {text!r}")
    return shard


shard_argument.__name__ = "I/N"


def resolve_shard(option: tuple[int, int] | None, environ: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """The (index, count) of this process: ``--shard`` if given, else torchrun's RANK /
    WORLD_SIZE, else (0, 1). A ``--shard`` that contradicts torchrun's world is refused."""
    world = _env_int(environ, "WORLD_SIZE")
    rank = _env_int(environ, "RANK")
    if option is not None:
        if world is not None and world > 1:
            raise VOSInputError(f"--shard {option[0]}/{option[1]} under torchrun (WORLD_SIZE={world}): "
                                "torchrun already splits the sequences by RANK; drop --shard")
        return option
    if world is None or world == 1:
        return 0, 1
    if rank is None or not 0 <= rank < world:
        raise VOSInputError(f"WORLD_SIZE={world} but RANK={environ.get('RANK')!r}: expected 0 <= RANK < WORLD_SIZE")
    return rank, world


def shard_sequences(names: Sequence[str], shard: tuple[int, int]) -> list[str]:
    """This shard's sequences: ``names[index::count]``."""
    index, count = shard
    return list(names[index::count])


def local_device(device: torch.device, environ: Mapping[str, str] = os.environ) -> torch.device:
    """A bare ``cuda`` device becomes ``cuda:LOCAL_RANK`` under torchrun (one GPU per process)."""
    local = _env_int(environ, "LOCAL_RANK")
    if device.type == "cuda" and device.index is None and local is not None:
        return torch.device("cuda", local % max(torch.cuda.device_count(), 1))
    return device


def _env_int(environ: Mapping[str, str], key: str) -> int | None:
    value = environ.get(key)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise VOSInputError(f"environment variable {key}={value!r}: expected an integer (set by torchrun)") from None
