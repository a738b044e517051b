"""TTVOS as a VOSMethod: adaptive long-term template + short-term matching (IEEE Access 2021).

Per object k and frame t (paper Sec. III, public HYOJINPARK/TTVOS ``VOS.forward``):

1. features s16, s8, s4 of frame t (shared by all objects);
2. long-term match L_k = gcq(X_k, G_k) with X_k = concat[s8, cy, cx, r, A_k] and the template
   G_k (C8, C8); short-term match from the previous frame's s16 and A_k inside the decoder;
3. logits_k (2, H, W) and the adaptive weight w_k = sigmoid(...) in (0, 1);
4. objects merged by the public soft aggregation (see ``layers.aggregate_objects``);
5. update: A_k <- [pool(1 - P_k, P_k), A_k[0:2], A_k[2:4]] with the aggregated P_k (soft),
   prev s16 <- s16, and G_k <- G_k / (1 + w_k) + I_k w_k / (1 + w_k) where
   I_k = softmax(key(X'_k) value(X'_k)^T / sqrt(h8 w8)) on the updated clue
   (``vos_kernels.template_update``, Eq. 2-3).

All objects of a video run as one batch through the head (B = objects). The state has a fixed
size per object (template C8 x C8, three stride-8 masks, one s16 map), so memory does not grow
with the video length.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vos_models.engine.interface import VideoState, VOSMethod, merge_new_masks
from vos_models.errors import VOSInputError

from .backbone import StrideSixteenTrunk
from ..padding import crop, pad, stride_padding
from ..planar import pooled_pair, two_way_softmax
from .layers import PAD_MULTIPLE, add_coordinates, aggregate_objects, pool_mask
from .network import TTVOSHead
from .training import TRAINABLE_BACKBONE_CHOICES, TransitionLossTerms, ttvos_training_loss


@dataclass(eq=False)
class TTVOSVideoState(VideoState):
    """Per-video state. O = ``num_objects`` objects known so far (ids 1..O, channel k = id k).

    history (O, 6, h8, w8): attention clue A; prev_s16 (O, C16, h16, w16); template
    (O, C8, C8); weight (O_old,): adaptive weights of the last update; ``size`` (H, W) of the
    video and its ``padding`` (left, right, top, bottom).
    """

    history: Tensor | None = None
    prev_s16: Tensor | None = None
    template: Tensor | None = None
    weight: Tensor | None = None
    size: tuple[int, int] | None = None
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)


class TTVOS(VOSMethod):
    """TTVOS (Park et al., "Adaptive Template and Transition Map for Real-Time Video Object
    Segmentation", IEEE Access 2021), registry name "ttvos".

    Args:
        backbone: "resnet18" (default, the public ``resnet18s16``), "resnet50"
            (``resnet50s16``), "mobilenetv3_large" (``mobileNetV3Larges16``) or
            "mobilenetv3_small" (``mobileNetV3Smalls16``) or "hrnetv2_w18_small" (``hrnetv2Sv1``,
            HRNetV2-W18-Small-v1, the paper's main backbone; "last" trains its ``stage4``).
        frozen_bn: freeze the backbone's batch norms (FrozenBatchNorm2d). False keeps
            BatchNorm2d, which trains with batch statistics (useful from scratch).
        train_backbone: which backbone parameters train: "last" (the s16 stage, as the paper:
            "we freeze every backbone layer except the last block"), "all" or "none".
        transition_loss_weight: weight of the transition-map loss L_tm (Eq. 5-6).
        template_mask_loss_weight: weight of the public code's extra BCE on the long-term
            match (``TmpLoss``; not in the paper's Eq. 6, so 0 by default).
        backbone_weights: optional path to a torchvision ResNet / MobileNetV3 weight file, or an
            HRNet file (``hrnet_w18_small_model_v1.pth``; head keys dropped), for the trunk.
    """

    name = "ttvos"
    state_type = TTVOSVideoState
    cuda_graph_modules = ("trunk", "head.decoder")

    def __init__(self, backbone: str = "resnet18", *, frozen_bn: bool = True, train_backbone: str = "last",
                 transition_loss_weight: float = 1.0, template_mask_loss_weight: float = 0.0,
                 backbone_weights: str | None = None):
        super().__init__()
        if train_backbone not in TRAINABLE_BACKBONE_CHOICES:
            raise VOSInputError(f"TTVOS: train_backbone must be one of {TRAINABLE_BACKBONE_CHOICES}, "
                                f"got {train_backbone!r}")
        self.train_backbone = train_backbone
        self.loss_weights = TransitionLossTerms(float(transition_loss_weight), float(template_mask_loss_weight))
        self.trunk = StrideSixteenTrunk(backbone, frozen_bn=frozen_bn)
        if backbone_weights is not None:
            from vos_models.backbones import load_backbone_weights
            from vos_models.backbones.mobilenetv3 import load_mobilenet_weights
            from vos_models.backbones.hrnet import load_hrnet_weights
            load = (load_mobilenet_weights if backbone.startswith("mobilenetv3")
                    else load_hrnet_weights if backbone.startswith("hrnet") else load_backbone_weights)
            load(self.trunk.network, backbone_weights)
        self.head = TTVOSHead(*self.trunk.channels)
        # Auxiliary heads without a loss weight never receive a gradient: do not train them
        # (DDP refuses parameters that take no part in the loss).
        self.head.decoder.transition.requires_grad_(self.loss_weights.transition != 0)
        self.head.decoder.template_mask.requires_grad_(self.loss_weights.template_mask != 0)
        for name, param in self.trunk.named_parameters():
            stage = self.trunk.stage_of(name)
            param.requires_grad_(train_backbone == "all"
                                 or (train_backbone == "last" and stage == self.trunk.s16_stage))

    # ------------------------------------------------------------------ inference
    def encode(self, frame: Tensor, padding: tuple[int, int, int, int]) -> tuple[Tensor, Tensor, Tensor]:
        """(N, 3, H, W) RGB in [0, 1] -> s16, s8 with coordinates (C8 + 3 channels), s4."""
        s16, s8, s4 = self.trunk(pad(self.trunk.normalize(frame), padding, "reflect"))
        return s16, add_coordinates(s8), s4

    def step(self, state: TTVOSVideoState, frame: Tensor, new_masks: Tensor | None,
             new_ids: list[int]) -> Tensor:
        self._check_step_inputs(state, frame, new_masks, new_ids)
        if state.size is None:
            state.size = tuple(frame.shape[-2:])
            state.padding = stride_padding(*state.size, PAD_MULTIPLE)
        old = state.num_objects
        if new_masks is None and old:  # a frame without masks: the tracking step
            prob, state.history, state.prev_s16, state.template, state.weight = self.track(
                frame, state.history, state.prev_s16, state.template)
            return prob
        if new_masks is not None:
            state.add_objects(new_masks, new_ids)  # checks the ids continue 1..O
        s16, s8c, s4 = self.encode(frame, state.padding)
        weight, prob = None, None
        if old:
            prob, weight = self._predict(s16, s8c, s4, state.history, state.prev_s16, state.template)
        if new_masks is not None and len(new_ids):
            # Given masks are padded like the frame (reflect, as the public code pads labels).
            masks = pad(new_masks.to(s16.dtype).unsqueeze(0), state.padding, "reflect")[0]
            prob = merge_new_masks(prob, masks, new_ids, state.num_objects)
        if prob is None:  # frames before the first object: all background, nothing to track
            return frame.new_zeros(1, 1, *state.size).fill_(1.0)
        state.history, state.prev_s16, state.template = self._advance(
            prob, s16, s8c, weight, old, state.history, state.template)
        state.weight = weight
        return crop(prob, state.padding).contiguous()

    tracked_inputs = ("history", "prev_s16", "template")
    tracked_outputs = ("history", "prev_s16", "template", "weight")

    def track(self, frame: Tensor, history: Tensor, prev_s16: Tensor,
              template: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """A frame without new masks: frame (1, 3, H, W) and the state's history (O, 6, h8, w8),
        prev_s16 (O, C16, h16, w16), template (O, C8, C8) -> (probabilities (1, O + 1, H, W),
        history, prev_s16, template, weight (O,))."""
        padding = stride_padding(frame.shape[-2], frame.shape[-1], PAD_MULTIPLE)
        s16, s8c, s4 = self.encode(frame, padding)
        prob, weight = self._predict(s16, s8c, s4, history, prev_s16, template)
        objects = history.shape[0]
        history, prev_s16, template = self._advance(prob, s16, s8c, weight, objects, history, template)
        return crop(prob, padding).contiguous(), history, prev_s16, template, weight

    def _predict(self, s16: Tensor, s8c: Tensor, s4: Tensor, history: Tensor, prev_s16: Tensor,
                 template: Tensor) -> tuple[Tensor, Tensor]:
        """The tracked objects' aggregated probabilities (1, O + 1, Hp, Wp) and weights (O,)."""
        logits, weight, _, _ = self.head.segment(s16, s8c, s4, history, prev_s16, template)
        # Aggregation and the recurrent state stay float32 under low-precision autocast.
        return aggregate_objects(two_way_softmax(logits)), weight

    def _advance(self, prob: Tensor, s16: Tensor, s8c: Tensor, weight: Tensor | None, old: int,
                 history: Tensor | None, template: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Every object's next clue, previous features and template after a frame (the first
        ``old`` objects were tracked, the others start here): (history, prev_s16, template)."""
        total = prob.shape[1] - 1
        pair = pooled_pair(prob[0, 1:], pool_mask)                   # (O, 2, h8, w8)
        if old:
            new_history = torch.cat([pair[:old], history[:, :4]], dim=1)
            if old < total:
                new_history = torch.cat([new_history, F.pad(pair[old:], (0, 0, 0, 0, 0, 4))])
        else:
            new_history = F.pad(pair, (0, 0, 0, 0, 0, 4))
        x = self.head.template_input(s8c, new_history)
        if old == total:
            new_template = self.head.new_template(x, template, weight)
        else:
            fresh = self.head.new_template(x[old:])
            new_template = fresh if not old else torch.cat(
                [self.head.new_template(x[:old], template, weight), fresh])
        return new_history, s16.expand(total, -1, -1, -1), new_template

    def _check_step_inputs(self, state, frame, new_masks, new_ids) -> None:
        if frame.dim() != 4 or frame.shape[:2] != (1, 3):
            raise ValueError(f"TTVOS.step: frame must be (1, 3, H, W), got {tuple(frame.shape)}")
        if state.size is not None and tuple(frame.shape[-2:]) != state.size:
            raise ValueError(f"TTVOS.step: frame size {tuple(frame.shape[-2:])} differs from the video's "
                             f"first frame {state.size}")
        if new_masks is not None and (new_masks.dim() != 3 or tuple(new_masks.shape[-2:]) != tuple(frame.shape[-2:])):
            raise ValueError(f"TTVOS.step: new_masks must be (K, {frame.shape[-2]}, {frame.shape[-1]}), "
                             f"got {tuple(new_masks.shape)}")
        if new_masks is None and new_ids:
            raise ValueError(f"TTVOS.step: new_ids {list(new_ids)} given without new_masks")

    # ------------------------------------------------------------------ training
    def training_loss(self, batch: dict) -> tuple[Tensor, dict[str, float]]:
        """Unrolled over the clip's T frames, gradients through every template update.

        Loss = CE(frames 1..T-1) + transition_loss_weight * L_tm (+ optional template-mask
        BCE); see ``training.ttvos_training_loss``.
        """
        return ttvos_training_loss(self, batch, self.loss_weights)

    def train(self, mode: bool = True):
        super().train(mode)
        # Frozen trunk stages keep running statistics fixed (public ResNetS16.train).
        if mode and self.train_backbone != "all":
            for name, modules in self.trunk.stages().items():
                if not (self.train_backbone == "last" and name == self.trunk.s16_stage):
                    for child in modules:
                        child.train(False)
        return self
