"""A distributed sampler that can start mid-epoch, for exact resumption.

Epoch e's order is a permutation drawn from (seed, e) only; rank r takes every world_size-th
index of it (the tail that does not divide evenly is dropped, so every rank runs the same
number of steps). ``set_epoch(e, start=k)`` skips the first k indices of this rank's share:
the ones a killed run had already consumed.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

from ..errors import VOSInputError


class ResumableSampler(Sampler[int]):
    def __init__(self, length: int, *, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True):
        if length < num_replicas:
            raise VOSInputError(f"ResumableSampler: {length} items cannot feed {num_replicas} processes")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"ResumableSampler: rank {rank} outside 0..{num_replicas - 1}")
        self.length, self.num_replicas, self.rank = length, num_replicas, rank
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.start = 0, 0

    @property
    def per_rank(self) -> int:
        return self.length // self.num_replicas

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= self.per_rank:
            raise ValueError(f"ResumableSampler: start {start} outside 0..{self.per_rank}")
        self.epoch, self.start = int(epoch), int(start)

    def indices(self) -> list[int]:
        """This rank's full order for the current epoch (before skipping ``start``)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        return order[: self.per_rank * self.num_replicas][self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start:])

    def __len__(self) -> int:
        return self.per_rank - self.start
