"""PCVOS training: the per-clip training loss, bootstrapped cross-entropy (image level) + dice
(clip level).

- Bootstrapped CE (STCN, `BootstrappedCE`): per frame, the mean of the hardest p-fraction of
  pixel cross-entropies; p = 1 until `start_warm` iterations, then falls linearly to `top_p`
  at `end_warm` (STCN: 20k, 70k, 0.15).
- Clip dice (PCVOS Eq. 5): L_clip = sum_k [1 - Dice(m~_k, m_k)], Dice = 2|a b| / (|a| + |b|),
  over the whole clip volume (L x H x W) of object k; padded objects are skipped.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

import vos_kernels
from vos_models.backbones.resnet import normalize_imagenet
from vos_models.training.losses import label_iou

from .network import STRIDE, upsample_logits


def bootstrap_fraction(iteration: int, start_warm: int, end_warm: int, top_p: float) -> float:
    """Fraction of pixels kept by the bootstrapped CE at `iteration` (1.0 during warm-up)."""
    if iteration < start_warm:
        return 1.0
    if iteration >= end_warm or end_warm <= start_warm:
        return top_p
    return top_p + (1 - top_p) * (end_warm - iteration) / (end_warm - start_warm)


def bootstrapped_cross_entropy(log_prob: Tensor, target: Tensor, fraction: float) -> Tensor:
    """log_prob (N, C, H, W) log-probabilities, target (N, H, W) long -> mean over frames of the
    mean of the top `fraction` pixel losses of each frame (STCN averages per frame too)."""
    raw = F.nll_loss(log_prob, target, reduction="none").flatten(1)  # (N, HW)
    if fraction >= 1.0:
        return raw.mean()
    k = max(1, int(raw.shape[1] * fraction))
    return raw.topk(k, dim=1, sorted=False).values.mean()


def clip_dice_loss(prob: Tensor, target: Tensor, valid: Tensor, eps: float = 1.0) -> Tensor:
    """prob, target (B, O, L, H, W); valid (B, O) bool -> mean over the batch of
    sum over valid objects of (1 - dice). `eps` smooths empty masks (dice of two empties = 1)."""
    inter = (prob * target).flatten(2).sum(-1)
    total = prob.flatten(2).sum(-1) + target.flatten(2).sum(-1)
    dice = (2 * inter + eps) / (total + eps)
    return ((1 - dice) * valid).sum(1).mean()


def pcvos_training_loss(method, batch: dict) -> tuple[Tensor, dict[str, float]]:
    """One annotated frame + `train_clips` clips (PCVOS per-clip training, Sec. 3.6).

    frames (B, T, 3, H, W) with H, W multiples of 16; masks (B, T, O, H, W); T - 1 frames
    are split into `train_clips` consecutive clips. Each clip reads memory (the annotated
    frame, then also the last frame of every earlier clip with its predicted mask), is
    refined by the ICR and decoded. Loss = bootstrapped CE (every predicted frame) +
    dice_weight * clip dice (per clip, summed over objects).
    """
    frames, masks, num_objects = batch["frames"], batch["masks"], batch["num_objects"]
    B, T, _, H, W = frames.shape
    O = masks.shape[2]
    if T < 1 + method.train_clips:
        raise ValueError(f"PCVOS.training_loss: need at least {1 + method.train_clips} frames "
                         f"(1 annotated + {method.train_clips} clips), got T={T}")
    if H % STRIDE or W % STRIDE:
        raise ValueError(f"PCVOS.training_loss: frame size must be a multiple of {STRIDE}, got {H}x{W}")
    iteration = int(batch.get("iteration", method.train_iteration))
    method.train_iteration = iteration + 1
    fraction = bootstrap_fraction(iteration, *method.bootstrap)
    net = method.network
    valid = torch.arange(O, device=frames.device)[None] < num_objects.to(frames.device)[:, None]  # (B, O)
    x = normalize_imagenet(frames.flatten(0, 1))
    feats = net.encode_key(x)
    unflat = lambda t: t.view(B, T, *t.shape[1:])  # noqa: E731
    k16, qv16, f16, f8, f4 = (unflat(t) for t in feats[:5])
    k_intra = unflat(feats.k_intra) if feats.k_intra is not None else None
    x = unflat(x)
    value0 = net.encode_value(x[:, 0], f16[:, 0], masks[:, 0])           # (B, O, Cv, h, w)
    mem_k, mem_v = [k16[:, 0].flatten(2)], [value0.flatten(1, 2).flatten(2)]
    bounds = [1 + (T - 1) * c // method.train_clips for c in range(method.train_clips + 1)]
    ce, dice, logs = 0.0, 0.0, {}
    for c in range(method.train_clips):
        a, b = bounds[c], bounds[c + 1]
        n = b - a
        query = k16[:, a:b].transpose(1, 2).flatten(2)                   # (B, Ck, n*P)
        readout = vos_kernels.memory_read(query, torch.cat(mem_k, 2), torch.cat(mem_v, 2),
                                          top_k=method.train_top_k)         # (B, O*Cv, n*P)
        h, w = k16.shape[-2:]
        readout = readout.view(B, O, -1, n, h, w).transpose(2, 3)        # (B, O, n, Cv, h, w)
        refined = net.refine(k_intra[:, a:b] if k_intra is not None else None, readout)
        logits = net.decode_objects(refined.transpose(0, 1).flatten(1, 2), qv16[:, a:b].flatten(0, 1),
                                    f8[:, a:b].flatten(0, 1), f4[:, a:b].flatten(0, 1))
        logits = logits[:, :, 0].transpose(0, 1)                           # (B*n, O, H/4, W/4)
        prob = torch.sigmoid(upsample_logits(logits)) * valid.repeat_interleave(n, 0)[:, :, None, None]
        agg = vos_kernels.soft_aggregate(prob)                             # (B*n, O+1, H, W)
        target = _class_map(masks[:, a:b].flatten(0, 1))
        ce = ce + bootstrapped_cross_entropy(agg.clamp_min(1e-8).log(), target, fraction) * n
        obj = agg[:, 1:].view(B, n, O, H, W).transpose(1, 2)
        dice = dice + clip_dice_loss(obj, masks[:, a:b].transpose(1, 2), valid)
        if c + 1 < method.train_clips:  # the clip's last frame joins memory with its predicted mask
            v = net.encode_value(x[:, b - 1], f16[:, b - 1], obj[:, :, -1])
            mem_k.append(k16[:, b - 1].flatten(2))
            mem_v.append(v.flatten(1, 2).flatten(2))
        with torch.no_grad():
            logs[f"iou_clip{c + 1}"] = float(label_iou(agg.argmax(1), target, pooled=True))
    ce = ce / (T - 1)
    loss = ce + method.dice_weight * dice
    logs.update(loss=float(loss.detach()), ce=float(ce.detach()), dice=float(dice.detach()),
                bootstrap_p=fraction)
    return loss, logs


def _class_map(masks: Tensor) -> Tensor:
    """(N, O, H, W) {0,1} -> (N, H, W) long: 0 background, i for object i (first wins)."""
    fg = masks > 0.5
    idx = torch.arange(1, masks.shape[1] + 1, device=masks.device)[None, :, None, None]
    return torch.where(fg, idx, masks.shape[1] + 1).amin(1).where(fg.any(1), 0)
