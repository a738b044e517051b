"""RGMP training losses for the two stages of the paper (section 3.2, implementation details 3.4).

The training engine hands every method the same batch: "frames" (B,T,3,H,W) in [0,1],
"masks" (B,T,O,H,W) {0,1}, "num_objects" (B,). RGMP trains on one instance at a time ("we just
select one instance if there are multiple instances"), so each sample contributes one object
drawn uniformly among its ``num_objects`` (a sample without objects is all background).

* ``train_stage="pretrain"`` (simulated samples): one frame per sample (drawn at random
  among its T frames) with the chosen object's mask goes through :func:`pairs.make_pairs`
  (strategies 1 and 2, deformed guidance mask), so any image + mask data serves, still images
  as T = 1 clips included. Loss: cross-entropy of the target frame's 2-class logits.
* ``train_stage="finetune"`` (video, with recurrence): frame 0 and its mask are the reference
  (encoded once); for t = 1..T-1 the network segments frame t guided by the previous
  estimate: the ground truth of frame 0 at t = 1, then the previous step's softmax output
  (soft, not binarised, with its gradient: back-propagation through time over the T-1
  steps; the paper uses 5 recurrences, i.e. T = 6). Loss: the mean over steps of the
  per-step cross-entropy. Frame skipping ("randomly skipped frames to simulate fast motion")
  is the clip sampler's job.

Inputs are zero-padded exactly as at inference (the public rule: up past the next multiple of
32, centred) and the logits cropped back.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vos_models.errors import VOSInputError
from vos_models.training.batch import unpack_clip_batch
from vos_models.training.losses import label_iou, pick_one_object

from .pairs import make_pairs
from ..padding import crop, pad
from .resize import padding_for

STAGES = ("pretrain", "finetune")


def check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise VOSInputError(f"RGMP: train_stage must be one of {STAGES}, got {stage!r}")




def _pad_like_inference(x: Tensor) -> tuple[Tensor, tuple[int, int, int, int]]:
    """Zero-pad the last two dims by the public inference rule (``resize.padding_for``), so the
    network trains with the same borders it sees at test time (at small training sizes the
    border is a large part of the input)."""
    padding = padding_for(x.shape[-2], x.shape[-1])
    return pad(x, padding), padding


def _iou(logits: Tensor, target: Tensor) -> float:
    """IoU of the predicted object (argmax channel 1) over the whole batch."""
    return float(label_iou(logits.argmax(1) == 1, target > 0.5, pooled=True))


def pretrain_loss(network, frames: Tensor, target: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Stage 1. frames (B,T,3,H,W), target (B,T,H,W) one object per sample."""
    b, t = frames.shape[:2]
    pick = torch.randint(t, (b,), device=frames.device)
    rows = torch.arange(b, device=frames.device)
    pair = make_pairs(frames[rows, pick], target[rows, pick][:, None])
    inputs, padding = _pad_like_inference(torch.cat([pair.frame, pair.guidance, pair.ref_frame, pair.ref_mask], 1))
    frame, guidance, ref_frame, ref_mask = inputs.split([3, 1, 3, 1], dim=1)
    logits = crop(network(frame, guidance, ref_frame, ref_mask), padding)
    label = pair.mask[:, 0].long()
    loss = F.cross_entropy(logits, label)
    return loss, {"loss": float(loss.detach()), "iou": _iou(logits.detach(), pair.mask[:, 0]),
                  "strategy2_fraction": float((pair.strategy == 2).float().mean())}


def finetune_loss(network, frames: Tensor, target: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Stage 2, recurrent. frames (B,T,3,H,W) with T >= 2, target (B,T,H,W)."""
    b, t = frames.shape[:2]
    if t < 2:
        raise ValueError(f"RGMP.training_loss (finetune): clips need T >= 2 frames (a reference and "
                         f"at least one target), got T = {t}")
    frames, padding = _pad_like_inference(frames)
    padded_target, _ = _pad_like_inference(target)
    ref_r5 = network.encoder(frames[:, 0], padded_target[:, 0, None])[0]
    guidance = padded_target[:, 0, None]
    losses, ious = [], []
    for step in range(1, t):
        r5, r4, r3, r2 = network.encoder(frames[:, step], guidance)
        logits = network.decoder(r5, ref_r5, r4, r3, r2)
        cropped = crop(logits, padding)
        losses.append(F.cross_entropy(cropped, target[:, step].long()))
        ious.append(_iou(cropped.detach(), target[:, step]))
        # The softmax output, kept soft and differentiable, guides the next step (BPTT).
        guidance = torch.softmax(logits, dim=1)[:, 1:2]
    loss = torch.stack(losses).mean()
    return loss, {"loss": float(loss.detach()), "iou": sum(ious) / len(ious), "iou_last": ious[-1]}


def rgmp_training_loss(method, batch: dict) -> tuple[Tensor, dict[str, float]]:
    """Dispatch on ``method.train_stage``; see the module docstring."""
    frames, masks, num_objects = unpack_clip_batch("RGMP.training_loss", batch)
    target = pick_one_object(masks.to(frames.dtype), num_objects)
    if method.train_stage == "pretrain":
        return pretrain_loss(method.network, frames, target)
    return finetune_loss(method.network, frames, target)
