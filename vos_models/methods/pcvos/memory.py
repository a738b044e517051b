"""Preallocated key/value memory for per-clip inference, with PMM's temporary entries.

Layout: keys (1, Ck, S * P) and values (1, O * Cv, S * P) for S slots of P = h * w positions,
written in place. Slots hold frames in time order; after the permanent slots come the
temporary slots of progressive memory matching (PCVOS Eq. 4), which are simply overwritten
by the next clip. A read passes *views* of the used prefix to `vos_kernels.memory_read`: no
concatenation per read or per write.

Objects may join late (a mask given on a later frame). In the public code every object has
its own bank that starts at the frame its mask was given; all banks receive the same frames
afterwards. Here objects that joined on the same frame form a group, and a group reads the
time-ordered suffix of slots starting at its first frame: again a view.

Growth: the bank starts with room for a few frames and doubles (one copy each time) up to
`max_frames` permanent slots plus the temporary ones, so a short video never allocates a
long video's memory and a long one does O(log max_frames) copies in all.

Bounding memory on long videos (`max_frames`): when the permanent slots are full, the oldest
slot that does not hold a given (annotated) mask is dropped, and the later slots move down by
one. So the annotated frames and the most recent `max_frames - #annotated` memory frames are
kept. The move is one copy of the kept slots, only when the cap is reached.
"""
from __future__ import annotations

import torch
from torch import Tensor

import vos_kernels


class ClipMemory:
    """Per-video memory bank. `key_dim` Ck, `value_dim` Cv per object, `positions` P = h*w."""

    def __init__(self, key_dim: int, value_dim: int, positions: int, max_frames: int,
                 temp_slots: int, *, device, dtype=torch.float32):
        if max_frames < 1:
            raise ValueError(f"memory cap max_frames must be >= 1, got {max_frames}")
        self.key_dim, self.value_dim, self.positions = key_dim, value_dim, positions
        self.max_frames, self.temp_slots = max_frames, temp_slots
        self.capacity = min(max_frames, 4) + temp_slots  # slots allocated now
        self.keys = torch.empty(1, key_dim, self.capacity * positions, device=device, dtype=dtype)
        self.values = torch.empty(1, 0, self.capacity * positions, device=device, dtype=dtype)
        self.frames: list[int] = []      # frame index of each permanent slot, time order
        self.pinned: list[bool] = []     # slot holds an annotated frame (never dropped)
        self.group_start: list[int] = []  # per object: first frame of its memory
        self.num_temp = 0

    @property
    def num_objects(self) -> int:
        return len(self.group_start)

    def add_objects(self, count: int, frame: int) -> None:
        """Grow the value bank by `count` objects whose memory starts at `frame` (one copy)."""
        old = self.values
        grown = old.new_zeros(1, old.shape[1] + count * self.value_dim, old.shape[2])
        grown[:, :old.shape[1]] = old
        self.values = grown
        self.group_start += [frame] * count

    def _ensure_capacity(self, slots: int) -> None:
        if slots <= self.capacity:
            return
        new = min(max(slots, 2 * self.capacity), self.max_frames + self.temp_slots)
        used = (len(self.frames) + self.num_temp) * self.positions
        for name in ("keys", "values"):
            old = getattr(self, name)
            grown = old.new_empty(1, old.shape[1], new * self.positions)
            grown[:, :, :used] = old[:, :, :used]
            setattr(self, name, grown)
        self.capacity = new

    def reserve_temporary(self, slots: int) -> None:
        """Make room for `slots` temporary entries (a clip longer than planned needs more)."""
        if slots > self.temp_slots:
            self.temp_slots = slots
        self._ensure_capacity(len(self.frames) + slots)

    def write(self, frame: int, key: Tensor, value: Tensor, *, pinned: bool = False) -> None:
        """Store one frame permanently. key (1, Ck, P); value (1, O*Cv, P) for all objects."""
        P = self.positions
        if len(self.frames) == self.max_frames:
            self._drop_one()
        self._ensure_capacity(len(self.frames) + 1)
        s = len(self.frames)
        self.keys[:, :, s * P:(s + 1) * P] = key
        self.values[:, :, s * P:(s + 1) * P] = value
        self.frames.append(frame)
        self.pinned.append(pinned)
        self.num_temp = 0  # temporary entries sit after the permanent ones: now overwritten

    def _drop_one(self) -> None:
        unpinned = [i for i, p in enumerate(self.pinned) if not p]
        if not unpinned:
            raise RuntimeError(f"PCVOS memory: all {self.max_frames} memory slots hold annotated "
                               "frames; raise max_memory_frames")
        i, n, P = unpinned[0], len(self.frames), self.positions
        # overlapping move: clone the source first
        self.keys[:, :, i * P:(n - 1) * P] = self.keys[:, :, (i + 1) * P:n * P].clone()
        self.values[:, :, i * P:(n - 1) * P] = self.values[:, :, (i + 1) * P:n * P].clone()
        del self.frames[i], self.pinned[i]

    def clear_temporary(self) -> None:
        self.num_temp = 0

    def write_temporary(self, key: Tensor, value: Tensor) -> None:
        """PMM: append (query key, raw readout) of one frame after the permanent slots."""
        if self.num_temp >= self.temp_slots:
            raise RuntimeError(f"PCVOS memory: more than {self.temp_slots} temporary entries in a clip "
                               "(call reserve_temporary first)")
        self._ensure_capacity(len(self.frames) + self.num_temp + 1)
        s, P = len(self.frames) + self.num_temp, self.positions
        self.keys[:, :, s * P:(s + 1) * P] = key
        self.values[:, :, s * P:(s + 1) * P] = value
        self.num_temp += 1

    def read(self, query_key: Tensor, top_k: int | None) -> Tensor:
        """query_key (1, Ck, N) -> readout (1, O*Cv, N) for all objects, one read per group."""
        end = (len(self.frames) + self.num_temp) * self.positions
        # The bank keeps the dtype it was created in (writes cast into it); a query from another
        # precision (a float32 state continued under bfloat16 autocast) is read in the bank's dtype.
        query_key = query_key.to(self.keys.dtype)
        outs = []
        o = 0
        while o < self.num_objects:
            start_frame = self.group_start[o]
            g = o
            while g < self.num_objects and self.group_start[g] == start_frame:
                g += 1
            first = next((i for i, f in enumerate(self.frames) if f >= start_frame), len(self.frames))
            begin = first * self.positions
            outs.append(vos_kernels.memory_read(
                query_key, self.keys[:, :, begin:end],
                self.values[:, o * self.value_dim:g * self.value_dim, begin:end], top_k=top_k))
            o = g
        return outs[0] if len(outs) == 1 else torch.cat(outs, 1)
