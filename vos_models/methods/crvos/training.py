"""CRVOS training recipe (paper §2.4-2.5) as stage configurations for the train CLI.

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

``train_schedule(stage, steps_per_epoch)`` turns a stage into ``TrainConfig`` fields, and
``augmentation(stage)`` into the clip-consistent ``ClipAugmentation`` (``vos_models.data.augment``).
With ``vos-train`` (E = epochs x videos / batch size steps; one epoch = one clip per video):

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

import math

from vos_models.data.augment import ClipAugmentation

PAPER_STAGES: dict[str, dict] = {
    "pretrain": dict(
        dataset="youtube-vos:train", clip_length=8, size=(240, 432), epochs=100, batch_size=4,
        lr=1e-4, weight_decay=0.0, lr_decay=1.0,
        augment=dict(hflip=0.5),
    ),
    "finetune": dict(
        dataset="davis2016:train", clip_length=16, size=(480, 864), epochs=200, batch_size=2,
        lr=1e-4, weight_decay=0.0, lr_decay=0.995,
        augment=dict(hflip=0.5, rotate_deg=30.0, shear_deg=30.0, scale=(0.75, 1.25)),
        init="pretrain",  # starts from the pre-training stage's weights
    ),
}


def train_schedule(stage: dict, steps_per_epoch: int) -> dict:
    """The stage's optimisation as ``TrainConfig`` fields (steps, lr, schedule, gamma, decay_every).

    An ``ExponentialLR(gamma)`` stepped once per epoch (agame-vos) is the trainer's
    "exponential" schedule with ``decay_every = steps_per_epoch``.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"train_schedule: steps_per_epoch must be >= 1, got {steps_per_epoch}")
    out = dict(steps=stage["epochs"] * steps_per_epoch, lr=stage["lr"], weight_decay=stage["weight_decay"],
               batch_size=stage["batch_size"])
    if stage["lr_decay"] == 1.0:
        return {**out, "schedule": "constant", "gamma": 1.0}
    return {**out, "schedule": "exponential", "gamma": stage["lr_decay"], "decay_every": steps_per_epoch}


def augmentation(stage: dict) -> ClipAugmentation:
    """The stage's data augmentation (same transform for every frame of a clip)."""
    return ClipAugmentation(**stage["augment"])


def lr_at_epoch(stage: dict, epoch: int) -> float:
    """Learning rate of ``stage`` during epoch ``epoch`` (0-based): ``lr * lr_decay ** epoch``."""
    if epoch < 0:
        raise ValueError(f"lr_at_epoch: epoch must be >= 0, got {epoch}")
    return stage["lr"] * math.pow(stage["lr_decay"], epoch)
