"""TTVOS training: the unrolled loss (CE + transition map, Eq. 5-6) and the paper's stages.

For each object track (every object < num_objects of every clip; objects train independently,
as the public trainer, which tracks one object per clip and never aggregates in training):

- frame 0: the ground-truth pair H_0 = (1 - y_0, y_0) fills the attention clue, LT_0 is built
  from it (``vos_kernels.template_update`` without a template);
- frame t = 1..T-1: logits_t, adaptive weight w_t, the transition map
  pi_hat_t = softmax(conv3x3(u8b_t)) (2 channels, stride 8);
  CE_t = cross_entropy(logits_t, y_t);
  L_tm,t = mean((pi_hat_t - pi_t)^2) with pi_t = H_t - H_hat_{t-1} (Eq. 5), where H_t is the
  clamped ground-truth pair and H_hat_{t-1} the previous estimate (the object's own softmax;
  H_0 at t = 1), both brought to stride 8 by bilinear resizing (the public trainer's
  ``nn.Upsample(mode='bilinear')``);
- the state advances with the object's own softmax (soft, not detached) and the template is
  updated with w_t, so gradients flow through every successive template_update (BPTT).

Loss = mean_t CE_t + lambda_tm * mean_t L_tm,t (+ lambda_tmp * template-mask BCE, the public
code's ``TmpLoss`` head, 0 by default because the paper's Eq. 6 has no such term).

As in the public trainer the transition head's output is a softmax over its two channels
(they sum to 1) while pi_t's two channels sum to 0, so L_tm cannot reach 0: its floor is 0.25
(the head encodes the transition as p_fg - 1/2), and training logs sit a little above it.

Two documented differences from the public trainer: (1) it averages the NLL over all T
frames including frame 0, whose term is the constant -log(1 - 1e-7); we average over the T - 1
predicted frames. (2) Its transition target keeps the gradient of H_hat_{t-1}; the paper calls
pi_t a ground truth, so we detach it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vos_models.training.batch import unpack_clip_batch
from vos_models.training.losses import label_iou

from ..padding import crop, pad, stride_padding
from .layers import PAD_MULTIPLE, pool_mask

TRAINABLE_BACKBONE_CHOICES = ("last", "all", "none")

#: The paper's training stages (Sec. IV, "Implementation Detail"; public train.py defaults).
#: Adam, constant learning rate, no weight decay. ``clip_length`` frames per sample.
TRAINING_STAGES = {
    # Pre-training on synthetic clips made from static images by random affine warps
    # (MSRA10K, ECSSD, HKU-IS in the paper; the package's synthetic clips here).
    "synthetic": dict(dataset="synthetic", clip_length=3, size=(240, 432), batch_size=48, epochs=100,
                      lr=2e-4, optimizer="adam", weight_decay=0.0),
    # Main training on videos: YouTube-VOS at 240 x 432, then DAVIS-17 at 480 x 864.
    "youtube_vos": dict(dataset="youtube_vos", clip_length=8, size=(240, 432), batch_size=24, epochs=100,
                        lr=3e-4, optimizer="adam", weight_decay=0.0),
    "davis": dict(dataset="davis", clip_length=8, size=(480, 864), batch_size=8, epochs=100,
                  lr=1e-4, optimizer="adam", weight_decay=0.0),
}

#: Clamp of the ground-truth pair in the transition target (public trainer).
TARGET_EPS = 1e-7


@dataclass(frozen=True)
class TransitionLossTerms:
    """Weights of the auxiliary terms: transition map (Eq. 5) and the template-mask BCE."""
    transition: float = 1.0
    template_mask: float = 0.0


def _check_batch(batch: dict) -> tuple[Tensor, Tensor, Tensor]:
    frames, masks, num_objects = unpack_clip_batch("TTVOS.training_loss", batch)
    t = frames.shape[1]
    if t < 2:
        raise ValueError(f"TTVOS.training_loss: clips need at least 2 frames, got T={t}")
    if t == 2:
        warnings.warn("TTVOS.training_loss: with 2-frame clips the adaptive weight gets no gradient (it acts "
                      "only through the template update that feeds a third frame); use clips of 3 or more "
                      "frames (the paper uses 3, then 8), or --ddp-find-unused under torchrun", stacklevel=3)
    return frames, masks, num_objects


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def ttvos_training_loss(method, batch: dict, weights: TransitionLossTerms) -> tuple[Tensor, dict[str, float]]:
    """See the module docstring. ``method`` is a TTVOS instance (trunk, head, encode)."""
    frames, masks, num_objects = _check_batch(batch)
    b, t, _, h, w = frames.shape
    counts = num_objects.to("cpu").clamp(min=0, max=masks.shape[2]).tolist()
    sample = torch.tensor([i for i in range(b) for _ in range(counts[i])], dtype=torch.long, device=frames.device)
    obj = torch.tensor([o for i in range(b) for o in range(counts[i])], dtype=torch.long, device=frames.device)
    if sample.numel() == 0:
        raise ValueError("TTVOS.training_loss: the batch holds no object (num_objects all zero)")
    padding = stride_padding(h, w, PAD_MULTIPLE)
    truth = masks[sample, :, obj].to(frames.dtype)               # (N, T, H, W)
    head = method.head

    def features(i: int):
        s16, s8c, s4 = method.encode(frames[:, i], padding)
        return s16[sample], s8c[sample], s4[sample]

    s16, s8c, _ = features(0)
    first = pad(torch.stack([1 - truth[:, 0], truth[:, 0]], dim=1), padding, "reflect")
    pooled = pool_mask(first)
    history = torch.cat([pooled, torch.zeros_like(pooled), torch.zeros_like(pooled)], dim=1)
    template = head.new_template(head.template_input(s8c, history))
    prev_s16, prev_estimate = s16, first

    ce_terms, tm_terms, tmp_terms, ious = [], [], [], []
    for i in range(1, t):
        s16, s8c, s4 = features(i)
        logits, weight, u8b, long_term = head.segment(s16, s8c, s4, history, prev_s16, template)
        target = truth[:, i]
        ce_terms.append(F.cross_entropy(crop(logits, padding), target.round().long()))
        size8 = u8b.shape[-2:]
        if weights.transition:
            truth_pair = pad(torch.stack([1 - target, target], dim=1), padding, "reflect").clamp(TARGET_EPS, 1 - TARGET_EPS)
            transition_target = _resize(truth_pair, size8) - _resize(prev_estimate.detach(), size8)
            transition = F.softmax(head.decoder.transition(u8b), dim=1)
            tm_terms.append(F.mse_loss(transition, transition_target))
        if weights.template_mask:
            small = F.interpolate(pad(target[:, None], padding, "reflect"), size=size8, mode="nearest")
            tmp_terms.append(F.binary_cross_entropy(torch.sigmoid(head.decoder.template_mask(long_term)), small))
        estimate = F.softmax(logits, dim=1)
        with torch.no_grad():
            ious.append(label_iou(crop(estimate[:, 1], padding) > 0.5, target > 0.5).mean())
        if i < t - 1:  # the update after the last frame feeds nothing
            history = torch.cat([pool_mask(estimate), history[:, :4]], dim=1)
            template = head.new_template(head.template_input(s8c, history), template, weight)
            prev_s16, prev_estimate = s16, estimate

    ce = torch.stack(ce_terms).mean()
    loss = ce
    logs = {"ce": float(ce.detach())}
    if tm_terms:
        tm = torch.stack(tm_terms).mean()
        loss = loss + weights.transition * tm
        logs["transition"] = float(tm.detach())
    if tmp_terms:
        tmp = torch.stack(tmp_terms).mean()
        loss = loss + weights.template_mask * tmp
        logs["template_mask"] = float(tmp.detach())
    logs["iou"] = float(torch.stack(ious).mean())
    logs["loss"] = float(loss.detach())
    return loss, logs
