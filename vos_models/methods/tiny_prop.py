"""``tiny-prop``: a very small trainable mask-propagation model for tests and demos.

Per object i, a few convolutions read [frame RGB, previous probability of i, previous
probability of the other objects] and give a logit; channel 0 (background) has logit 0 and a
softmax over background + objects gives the aggregated probabilities. It is trained
recurrently over T-frame clips (BPTT through its own soft predictions). It is the cheapest
real consumer of the training engine (DDP, AMP, resume), not a competitive method.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine.interface import VOSMethod, merge_new_masks
from ..errors import VOSInputError
from ..registry import MethodOption, register_method
from ..training.losses import mask_padded_objects, multi_object_cross_entropy
from .copy_previous import PreviousOutputState


class TinyProp(VOSMethod):
    name = "tiny-prop"
    state_type = PreviousOutputState

    def __init__(self, channels: int = 16, stride: int = 2):
        super().__init__()
        if channels < 1 or stride < 1:
            raise VOSInputError(f"tiny-prop: channels and stride must be >= 1, got {channels}, {stride}")
        self.stride = stride
        self.net = nn.Sequential(
            nn.Conv2d(5, channels, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=2, dilation=2), nn.ReLU(inplace=True),
            nn.Conv2d(channels, 1, 3, padding=1))

    def logits(self, frame: Tensor, previous: Tensor) -> Tensor:
        """frame (B, 3, H, W) in [0, 1]; previous (B, O + 1, H, W) -> logits (B, O + 1, H, W)."""
        b, channels, h, w = previous.shape
        objects = channels - 1
        others = previous[:, 1:].sum(dim=1, keepdim=True) - previous[:, 1:]
        x = torch.cat([frame.unsqueeze(1).expand(b, objects, 3, h, w), previous[:, 1:, None], others[:, :, None]], 2)
        x = x.reshape(b * objects, 5, h, w)
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride, ceil_mode=True)
        y = self.net(x - 0.5)
        if self.stride > 1:
            y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
        return torch.cat([y.new_zeros(b, 1, h, w), y.reshape(b, objects, h, w)], dim=1)

    def step(self, state: PreviousOutputState, frame: Tensor, new_masks: Tensor | None, new_ids: list[int]) -> Tensor:
        state.add_objects(new_masks, new_ids)
        prob = None
        if state.previous is not None:
            previous = torch.cat([state.previous, state.previous.new_zeros(
                1, state.num_objects + 1 - state.previous.shape[1], *state.previous.shape[2:])], 1)
            prob = torch.softmax(self.logits(frame, previous).float(), dim=1)
        prob = merge_new_masks(prob, new_masks, new_ids, state.num_objects)
        state.previous = prob
        return prob

    def training_loss(self, batch: dict) -> tuple[Tensor, dict[str, float]]:
        frames, masks, num_objects = batch["frames"], batch["masks"], batch["num_objects"]
        b, t = frames.shape[:2]
        background = (1 - masks[:, 0].sum(1, keepdim=True)).clamp(min=0)
        previous = torch.cat([background, masks[:, 0]], dim=1)
        losses = []
        for i in range(1, t):
            logits = mask_padded_objects(self.logits(frames[:, i], previous), num_objects)
            losses.append(multi_object_cross_entropy(logits, masks[:, i], num_objects))
            previous = torch.softmax(logits.float(), dim=1)  # BPTT through the soft prediction
        loss = torch.stack(losses).mean()
        return loss, {"loss": float(loss.detach())}


register_method("tiny-prop", TinyProp,
                options={"channels": MethodOption(int, "feature channels (default 16)"),
                         "stride": MethodOption(int, "working stride (default 2)")})
