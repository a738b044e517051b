"""Fold frozen batch norms into the convolutions that feed them, for inference.

A frozen norm after a convolution is an affine map per output channel c:

    bn(conv(x))_c = scale_c * (W_c * x + b_c - mean_c) + beta_c,   scale_c = gamma_c / sqrt(var_c + eps)
                  = (scale_c W_c) * x + (scale_c (b_c - mean_c) + beta_c)

so the pair becomes one convolution with weight ``scale_c W_c`` (shape (C_out, C_in/g, kh, kw))
and bias ``scale_c (b_c - mean_c) + beta_c`` (C_out,), and the norm becomes ``nn.Identity``.
That removes one full read and write of every normed activation per frame.

Which convolution feeds which norm is not in the module tree (a block's ``forward`` decides), so
:func:`fold_batch_norms` *observes* it: it steps the method through a small synthetic video with
forward hooks and pairs a norm with a convolution only when, on every call, the norm's input is
that convolution's output tensor itself, unmodified since (same tensor version counter), and the
convolution has no other partner. A convolution whose output is *also* used elsewhere (say, a
residual) would still look like a pair, so the fold is then checked end to end: the folded copy
must give the original's probabilities on the probe video (float32 rounding only), or it raises.

Folding works on a copy: the method given is left as it is (its state-dict keeps its norms; the
folded copy has no norm entries and is for inference only).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..backbones.frozen_bn import FrozenBatchNorm2d
from ..errors import VOSInputError
from .conformance import _video
from .interface import VOSMethod
from .session import VideoSession

# float32 rounding of a reassociated multiply-add through a few dozen layers stays far below this.
FOLD_ATOL = 1e-4


@dataclass
class FoldReport:
    """What :func:`fold_batch_norms` did: ``folded`` pairs, ``norms`` frozen norms in the method,
    ``max_error`` the largest probability difference on the probe video."""

    folded: int
    norms: int
    max_error: float


def _is_frozen_norm(module: nn.Module) -> bool:
    return isinstance(module, FrozenBatchNorm2d) or (isinstance(module, nn.BatchNorm2d) and not module.training
                                                       and module.track_running_stats)


def _norm_scale_shift(norm: nn.Module) -> tuple[Tensor, Tensor]:
    """Per-channel (scale, shift) with norm(y) = scale * y + shift, in float64 for the fold."""
    weight = norm.weight if norm.weight is not None else torch.ones_like(norm.running_var)
    bias = norm.bias if norm.bias is not None else torch.zeros_like(norm.running_mean)
    scale = weight.double() * (norm.running_var.double() + norm.eps).rsqrt()
    return scale, bias.double() - norm.running_mean.double() * scale


def _observe_pairs(method: VOSMethod, height: int, width: int, frames: int) -> dict[str, str]:
    """Norm name -> convolution name, for the norms that always directly follow one convolution."""
    names = {module: name for name, module in method.named_modules()}
    produced: dict[int, tuple[nn.Conv2d, Tensor, int]] = {}
    partner: dict[nn.Module, nn.Module | None] = {}
    keep_alive: list[Tensor] = []  # outputs stay referenced so that their ids are never reused

    def on_conv(module, inputs, output):
        if isinstance(output, Tensor):
            produced[id(output)] = (module, output, output._version)
            keep_alive.append(output)

    def on_norm(module, inputs):
        source = produced.get(id(inputs[0]))
        conv = source[0] if source is not None and source[1] is inputs[0] and source[2] == inputs[0]._version \
            else None
        if module in partner and partner[module] is not conv:
            conv = None
        partner[module] = conv

    hooks = [m.register_forward_hook(on_conv) for m in method.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_pre_hook(on_norm) for m in method.modules() if _is_frozen_norm(m)]
    try:
        _probe(method, height, width, frames)
    finally:
        for hook in hooks:
            hook.remove()
    pairs = {names[norm]: names[conv] for norm, conv in partner.items() if conv is not None}
    convs = list(pairs.values())
    # A convolution feeding two norms cannot take both folds.
    return {norm: conv for norm, conv in pairs.items() if convs.count(conv) == 1}


def _probe(method: VOSMethod, height: int, width: int, frames: int) -> list[Tensor]:
    """Probabilities of ``method`` on a small synthetic video (all objects given on frame 0)."""
    clip = _video(height, width, frames, seed=0)
    device = next(method.parameters()).device
    video = clip.frames.to(device)
    objects = list(range(1, clip.num_objects + 1))
    first = torch.stack([(clip.labels[0] == o).float() for o in objects]).to(device)
    session = VideoSession(method, num_objects_hint=len(objects))
    # no_grad, not inference_mode (left even when the caller is inside one): the pairing checks
    # tensor version counters, which inference tensors do not keep.
    with torch.inference_mode(False), torch.no_grad():
        if method.clip_wise:
            masks = [first] + [None] * (video.shape[0] - 1)
            ids = [objects] + [[] for _ in range(video.shape[0] - 1)]
            return list(session.step_clip(video.unsqueeze(0), masks, ids).float().unbind(1))
        return [session.step(video[t:t + 1], first if t == 0 else None, objects if t == 0 else []).float()
                for t in range(video.shape[0])]


def _fold_pair(conv: nn.Conv2d, norm: nn.Module) -> None:
    scale, shift = _norm_scale_shift(norm)
    with torch.no_grad():
        weight = conv.weight.double() * scale.reshape(-1, 1, 1, 1)
        bias = shift if conv.bias is None else shift + scale * conv.bias.double()
        conv.weight.copy_(weight.to(conv.weight.dtype))
        if conv.bias is None:
            conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
        else:
            conv.bias.copy_(bias.to(conv.bias.dtype))


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def fold_batch_norms(method: VOSMethod, *, height: int = 64, width: int = 96,
                     frames: int = 3) -> tuple[VOSMethod, FoldReport]:
    """A copy of ``method`` (in eval mode) with every conv -> frozen-norm pair folded.

    The pairs are observed on a synthetic video of ``frames`` frames (height, width) and the
    fold is verified on it (max probability difference <= ``FOLD_ATOL``; else ``RuntimeError``).
    Raises :class:`VOSInputError` if ``method`` is in training mode (a training norm is not
    frozen) and returns (copy, :class:`FoldReport`).
    """
    if method.training:
        raise VOSInputError("fold_batch_norms: method must be in eval mode (call .eval()); folding is for inference")
    folded = copy.deepcopy(method)
    norms = sum(1 for m in folded.modules() if _is_frozen_norm(m))
    pairs = _observe_pairs(folded, height, width, frames)
    expected = _probe(method, height, width, frames)
    for norm_name, conv_name in pairs.items():
        _fold_pair(folded.get_submodule(conv_name), folded.get_submodule(norm_name))
        _replace(folded, norm_name, nn.Identity())
    got = _probe(folded, height, width, frames)
    error = max((a - b).abs().max().item() for a, b in zip(expected, got))
    if not error <= FOLD_ATOL:
        raise RuntimeError(f"fold_batch_norms: the folded {method.name} differs from the original by {error:.3g} "
                           f"(> {FOLD_ATOL}) on the probe video: a folded convolution's output is used elsewhere")
    return folded, FoldReport(folded=len(pairs), norms=norms, max_error=error)
