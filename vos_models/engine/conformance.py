"""Checks that a VOSMethod keeps the method contract (:mod:`.interface`); every method's tests
call them, and ``docs/models.md`` runs one on a new method as its example (this one runs as a
doctest in ``tests/test_models_contract_doc.py``):

    >>> from vos_models import build_method
    >>> from vos_models.engine.conformance import check_vos_method
    >>> check_vos_method(build_method("copy-previous"), height=32, width=48)   # AssertionError on a breach

The method is driven as the engine drives it, through a :class:`~.session.VideoSession`. Each
check raises AssertionError naming what broke:

- outputs are (1, O + 1, H, W) (or (L, O + 1, H, W) from ``step_clip``), finite, in [0, 1],
  summing to 1 over channels;
- on a frame that brings masks, the output for those objects equals the given masks;
- the method leaves the frame index to the engine (it reads ``state.frame_index``, the
  session moves it on);
- objects whose first mask arrives on a later frame are added (channel count grows);
- two videos do not share state (a fresh ``new_video`` gives the same outputs again);
- the per-video state stops growing on a long video (bounded memory): the second half of the
  video reaches no larger state than the first half.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..data.synthetic import SyntheticClipGenerator
from .interface import VOSMethod
from .session import VideoSession


def state_numel(obj, _seen=None) -> int:
    """Elements in every tensor reachable from ``obj`` (attributes, lists, tuples, dicts)."""
    seen = _seen if _seen is not None else set()
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if torch.is_tensor(obj):
        return obj.numel()
    if isinstance(obj, dict):
        return sum(state_numel(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_numel(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, torch.nn.Module):
        return sum(state_numel(v, seen) for v in vars(obj).values())
    return 0


def _video(height: int, width: int, frames: int, seed: int):
    """A synthetic video (of at least 3 frames) whose object 2 starts on a later frame."""
    frames = max(frames, 3)
    generator = SyntheticClipGenerator(height, width, frames, min_objects=2, max_objects=3,
                                       entering_probability=1.0, seed=seed)
    for index in range(100):
        clip = generator.clip(index)
        if clip.num_objects >= 2 and int(clip.first_frame.max()) > 0:
            return clip
    raise RuntimeError("no synthetic clip with a late object")  # pragma: no cover


def _check_probabilities(prob: Tensor, objects: int, size: tuple[int, int], where: str, atol: float) -> None:
    assert prob.dim() == 4 and prob.shape[1:] == (objects + 1, *size), \
        f"{where}: expected (*, {objects + 1}, {size[0]}, {size[1]}), got {tuple(prob.shape)}"
    prob = prob.float()
    assert torch.isfinite(prob).all(), f"{where}: non-finite probabilities"
    assert prob.min() >= -atol and prob.max() <= 1 + atol, f"{where}: probabilities outside [0, 1]"
    total = prob.sum(dim=1)
    assert torch.allclose(total, torch.ones_like(total), atol=atol), \
        f"{where}: channels sum to {total.min().item():.4f}..{total.max().item():.4f}, not 1"


def _run(method: VOSMethod, clip, device, atol: float) -> list[Tensor]:
    """Step through the clip (or feed it as one clip for clip-wise methods); check each output."""
    frames = clip.frames.to(device)
    size = tuple(frames.shape[-2:])
    session = VideoSession(method, num_objects_hint=clip.num_objects)
    masks, ids, counts = [], [], []
    known = 0
    for t in range(frames.shape[0]):
        new = [o for o in range(1, clip.num_objects + 1) if int(clip.first_frame[o - 1]) == t]
        masks.append(torch.stack([(clip.labels[t] == o).float() for o in new]).to(device) if new else None)
        ids.append(new)
        known += len(new)
        counts.append(known)
    outputs = []
    with torch.no_grad():
        if method.clip_wise:
            out = session.step_clip(frames.unsqueeze(0), masks, ids)
            _check_probabilities(out, counts[-1], size, f"{method.name}.step_clip", atol)
            outputs = list(out.unsqueeze(1))
        else:
            for t in range(frames.shape[0]):
                out = session.step(frames[t:t + 1], masks[t], ids[t])
                _check_probabilities(out, counts[t], size, f"{method.name}.step frame {t}", atol)
                outputs.append(out)
    assert session.frame_index == frames.shape[0], \
        f"{method.name}: the frame index is {session.frame_index} after {frames.shape[0]} frames"
    for t, (given, new) in enumerate(zip(masks, ids)):
        if given is None:
            continue
        got = outputs[t][0, new].float()
        assert torch.allclose(got, given, atol=atol), \
            f"{method.name}: frame {t} brings masks for objects {new} but the output differs from them " \
            f"(max error {(got - given).abs().max().item():.4f})"
    return outputs


def check_vos_method(method: VOSMethod, *, height: int = 64, width: int = 96, frames: int = 8,
                     long_frames: int = 24, device: str | torch.device = "cpu", seed: int = 0,
                     atol: float = 1e-4) -> None:
    """Run every check above on ``method`` (in eval mode, without gradients)."""
    method = method.to(device).eval()
    clip = _video(height, width, frames, seed)
    first = _run(method, clip, device, atol)
    second = _run(method, clip, device, atol)
    for t, (a, b) in enumerate(zip(first, second)):
        assert torch.allclose(a, b, atol=atol), f"{method.name}: a second video gives other outputs at frame " \
                                                f"{t}: state leaks between videos"
    check_bounded_memory(method, height=height, width=width, frames=long_frames, device=device, seed=seed)


def check_bounded_memory(method: VOSMethod, *, height: int = 64, width: int = 96, frames: int = 24,
                         device: str | torch.device = "cpu", seed: int = 0) -> list[int]:
    """Step through a long video; the state's tensor size must not reach a new peak in its second
    half. Returns the per-frame sizes (elements). Clip-wise methods are fed clips of their
    ``clip_length``."""
    clip = _video(height, width, 3, seed)
    frame = clip.frames[:1].to(device)
    mask = (clip.labels[0] == 1).float().unsqueeze(0).to(device)
    session = VideoSession(method, num_objects_hint=1)
    sizes = []
    with torch.no_grad():
        if method.clip_wise:
            length = method.clip_length
            for start in range(0, frames, length):
                count = min(length, frames - start)
                batch = frame.unsqueeze(1).expand(1, count, *frame.shape[1:]).clone()
                given = [mask if start == 0 and i == 0 else None for i in range(count)]
                session.step_clip(batch, given, [[1] if start == 0 and i == 0 else [] for i in range(count)])
                sizes.extend([state_numel(session.state)] * count)
        else:
            for t in range(frames):
                # a new tensor every frame, as from a decoder (a method may keep frames)
                session.step(frame.clone(), mask if t == 0 else None, [1] if t == 0 else [])
                sizes.append(state_numel(session.state))
    half = len(sizes) // 2
    assert max(sizes[half:]) <= max(sizes[:half]), \
        f"{method.name}: state keeps growing on a long video ({sizes[half - 1]} -> {sizes[-1]} elements over " \
        f"{len(sizes)} frames): cap the memory"
    return sizes

