"""User object ids <-> engine ids, shared by the InferenceEngine and the Tracker.

The method contract numbers objects 1..O in order of first appearance. Users name objects with
any ids 1..254 of their masks (255 is void). This module keeps the mapping, turns a frame's
label map into the contract's masks and ids (tracked objects first, as corrections, then the
new ones), and maps predicted engine labels back to user ids. A deleted object keeps its engine
id (methods cannot drop objects) but is hidden: the Tracker zeroes its channel.

Every mask given to the engine is applied: a later mask of a tracked object corrects it. Ground
truth used as input (evaluation, validation) must therefore go through :func:`first_appearances`,
the semi-supervised protocol: each object's mask on the first frame that has it, never again.
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import torch
from torch import Tensor

from ..data.palette import VOID_LABEL, object_ids


def channel_labels(prob: Tensor) -> np.ndarray:
    """(C, H, W) probabilities -> (H, W) uint8 index of the largest channel (the first on ties),
    on the host.

    On CPU a running maximum over channels: a few contiguous passes, much faster than torch's
    argmax reduction over the leading (strided) axis for the small C of VOS (480p, C = 2:
    ~40 ms -> ~1 ms); on a GPU torch's argmax, then one copy of the uint8 labels."""
    if prob.device.type != "cpu":
        return prob.float().argmax(dim=0).to("cpu", torch.uint8).numpy()
    prob = prob.detach().float().numpy()
    best = prob[0].copy()
    labels = np.zeros(prob.shape[1:], np.uint8)
    for channel in range(1, prob.shape[0]):
        better = prob[channel] > best
        labels[better] = channel
        np.maximum(best, prob[channel], out=best)
    return labels


def first_appearances(masks: "Mapping[str, np.ndarray] | Callable[[str], np.ndarray | None]"
                      ) -> Callable[[str], "np.ndarray | None"]:
    """A mask provider for one video, called frame by frame in order: each frame's labels
    keep only the objects no earlier frame had (the others become background, void stays
    void); None when it has no new object. ``masks``: {frame name: (H, W) ids} or a function
    name -> ids or None."""
    get = masks.get if isinstance(masks, Mapping) else masks
    seen: set[int] = set()

    def provide(name: str) -> "np.ndarray | None":
        labels = get(name)
        if labels is None:
            return None
        fresh = set(object_ids(labels)) - seen
        if not fresh:
            return None
        seen.update(fresh)
        keep = np.isin(labels, sorted(fresh | {VOID_LABEL}))
        return np.where(keep, labels, 0).astype(labels.dtype)

    return provide


class ObjectIds:
    """The user id of each engine id (None once deleted)."""

    def __init__(self):
        self.user_ids: list[int | None] = []   # engine id i -> user_ids[i - 1]

    @property
    def count(self) -> int:
        """Engine ids handed out (deleted ones included): the method's object count."""
        return len(self.user_ids)

    @property
    def tracked(self) -> list[int]:
        """User ids tracked now, in order of first appearance."""
        return [u for u in self.user_ids if u is not None]

    def engine_id(self, user_id: int) -> int | None:
        return self.user_ids.index(user_id) + 1 if user_id in self.user_ids else None

    def given_objects(self, labels: np.ndarray, device: torch.device,
                      extra_empty: list[int] = ()) -> tuple[Tensor | None, list[int]]:
        """The masks of a frame's labels and their engine ids: tracked objects first (corrections:
        the mask replaces the prediction), then empty masks for the engine ids in `extra_empty`
        (deleted objects: nowhere from now on), then the new objects, numbered on."""
        present = object_ids(labels)
        corrected = [v for v in present if v in self.user_ids]
        new_user = [v for v in present if v not in self.user_ids]
        corrected_ids = [self.engine_id(v) for v in corrected]
        empty = [e for e in extra_empty if e not in corrected_ids]
        if not present and not empty:
            return None, []
        ids = corrected_ids + empty
        first = self.count + 1
        self.user_ids.extend(new_user)
        planes = [labels == v for v in corrected] + [np.zeros(labels.shape, bool)] * len(empty) + \
            [labels == v for v in new_user]
        masks = torch.from_numpy(np.stack(planes)).to(device=device, dtype=torch.float32)
        return masks, ids + list(range(first, first + len(new_user)))

    def delete(self, user_ids) -> list[int]:
        """Stop tracking these user ids; returns their engine ids (unknown ids: KeyError)."""
        engine = []
        for user in user_ids:
            index = self.engine_id(int(user))
            if index is None:
                raise KeyError(f"object {user} is not tracked (tracked: {self.tracked})")
            self.user_ids[index - 1] = None
            engine.append(index)
        return engine

    def to_user_labels(self, internal: np.ndarray) -> np.ndarray:
        """(H, W) engine ids -> user ids (a deleted object's pixels become background)."""
        lookup = np.zeros(256, np.uint8)
        lookup[1:self.count + 1] = [u or 0 for u in self.user_ids]
        return lookup[internal]
