"""CRVOS training: the unrolled loss, and the paper's recipe (§2.4-2.5) as ``vos-train`` commands.

The public repository (CV-IP/CRVOS) ships no training code; the paper gives the recipe and the
code it builds on (agame-vos, ``trainers/vos_trainer.py``) gives the loop: NLL loss on
log-probabilities, Adam over the trainable parameters only, an ``ExponentialLR`` stepped once
per epoch, one randomly chosen object per training clip.

    stage      data                 frames  size       epochs  lr     lr decay / epoch  augmentation
    pretrain   YouTube-VOS train    8       240 x 432  100     1e-4   none              horizontal flip
    finetune   DAVIS 2016 train     16      480 x 864  200     1e-4   x 0.995           flip, rotation +-30,
                                                                                        shear +-30, scale 0.75-1.25

The paper does not give a batch size or a weight decay: ``batch_size`` follows agame-vos's
first stage (4 clips of 8 frames) and is halved for the longer, larger fine-tuning clips;
weight decay is 0 (the paper lists none).

With ``vos-train`` (E = epochs x videos / batch size steps; one epoch = one clip per video;
the augmentation flags build the clip-consistent ``vos_models.data.augment.ClipAugmentation``):

    # pre-training (YouTube-VOS train folder: JPEGImages/<video>, Annotations/<video>)
    vos-train --method crvos --data <ytvos>/train --num-frames 8 --size 240 432 --batch-size 4 \\
        --lr 1e-4 --hflip 0.5 --steps E --output runs/crvos_pretrain
    # fine-tuning (DAVIS 2016 train sequences), from the pre-trained weights
    vos-train --method crvos --data <davis> --sequences <train list> --num-frames 16 --size 480 864 \\
        --batch-size 2 --lr 1e-4 --schedule exponential --gamma 0.995 \\
        --hflip 0.5 --rotate 30 --shear 30 --scale 0.75 1.25 --steps E \\
        --init-checkpoint runs/crvos_pretrain/last.pt --output runs/crvos_finetune

``--schedule exponential`` with the default ``--decay-every 0`` multiplies the learning rate by
gamma once per epoch (every ``len(dataset) // (batch size x processes)`` steps): agame-vos's
``ExponentialLR`` stepped per epoch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vos_models.training.losses import label_iou, pick_one_object

from ..padding import crop, pad
from .aggregate import aggregate_objects
from .clue import build_clue, coarse_mask
from .network import encoder_features


def crvos_training_loss(method, batch: dict) -> tuple[Tensor, dict[str, float]]:
    """Unrolled training loss (paper §2.4-2.5: NLL, one randomly chosen object per clip).

    batch: ``frames (B, T, 3, H, W)`` in [0, 1], ``masks (B, T, O, H, W)`` {0, 1},
    ``num_objects (B,)``. For each clip one object k (uniform over its ``num_objects``; a clip
    without objects has an all-background target, as in RGMP's loss) is tracked from its
    frame-0 mask through frames 1..T-1, the Clue flowing from frame to frame with gradients (BPTT), as at inference: ``clue <- avg_pool16([1-P, P])`` with ``P`` the
    aggregated probability of the single object. Loss = mean over frames 1..T-1 and pixels of
    ``NLL(log_softmax(score), mask_k)``.
    """
    frames, masks, num_objects = batch["frames"], batch["masks"], batch["num_objects"]
    if frames.dim() != 5 or masks.dim() != 5 or frames.shape[1] < 2:
        raise ValueError(f"training_loss: frames must be (B, T>=2, 3, H, W) and masks (B, T, O, H, W), "
                         f"got {tuple(frames.shape)} and {tuple(masks.shape)}")
    b, t = frames.shape[:2]
    if num_objects.shape != (b,) or (num_objects < 0).any():
        raise ValueError(f"training_loss: num_objects must be ({b},) counts >= 0, got {num_objects.tolist()}")
    target = pick_one_object(masks, num_objects)  # (B, T, H, W); a clip without objects: all background

    images, padding = method.prepare(frames[:, 1:].flatten(0, 1))
    feats = encoder_features(method.backbone, images)
    projected = method.refine.project(feats)
    projected = {k: v.unflatten(0, (b, t - 1)) for k, v in projected.items()}
    clue_mask = coarse_mask(pad(target[:, 0:1].float(), padding, "reflect")[:, 0])
    losses, ious = [], []
    for step in range(t - 1):
        score = method.refine({k: v[:, step] for k, v in projected.items()}, build_clue(clue_mask))
        log_prob = F.log_softmax(score, dim=1)
        label = target[:, step + 1].long()
        losses.append(F.nll_loss(crop(log_prob, padding), label))
        prob = aggregate_objects(log_prob.exp().unsqueeze(1), method.aggregation)
        clue_mask = coarse_mask(prob[:, 1])
        with torch.no_grad():
            ious.append(label_iou(crop(score, padding).argmax(dim=1), label).mean())
    loss = torch.stack(losses).mean()
    return loss, {"loss": loss.item(), "iou": torch.stack(ious).mean().item()}
