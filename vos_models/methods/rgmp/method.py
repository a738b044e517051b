"""RGMP as a VOSMethod: reference encoded once, soft mask propagation, multi-scale inference,
multiple objects merged by soft aggregation (paper sections 3.3, Eq. 1).

Inference protocol (the public ``run.py``: ``Encode_MS``, ``Propagate_MS``, ``Infer_SO``,
``Infer_MO``), per video:

* Frames and masks are zero-padded to the public working size (``resize.padding_for``); every
  state tensor lives at that padded size, the padding included, and only outputs are cropped.
* On the frame that brings an object's mask, that frame and mask are encoded once per scale
  and only r5 is kept (the object's reference). With two or more objects a further reference
  is encoded from that frame and the union of the object masks: it drives the "all objects"
  propagation whose complement is the background probability.
* Every later frame, for each scale s: resize frame and guidance masks to the scale's working
  size (OpenCV INTER_LINEAR), encode the frame with each guidance mask, decode against the
  matching reference, take softmax channel 1 and resize it back. The per-scale probabilities
  are averaged (float32, in the order of ``scales``).
* Guidance masks are the previous frame's soft, aggregated probabilities, never binarised:
  object o uses its own channel, the union reference uses the sum of the object channels.
* One object: the output is [1 - p, p] with no aggregation (public ``Infer_SO``). Two or
  more: background = 1 - p_all, then Eq. 1 over [background, p_1..p_O]
  (:func:`aggregate_with_background`).

Objects that arrive on later frames get their reference from that frame; the union reference
is then re-encoded from that frame with the union of all objects' current probabilities (the
public code only knows first-frame objects; this is the natural extension).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import vos_kernels
from torch import Tensor

from vos_models.engine.interface import VideoState, VOSMethod, merge_new_masks
from vos_models.errors import VOSInputError

from ..padding import crop, pad
from . import resize as rs
from .network import RGMPNetwork
from .training import check_stage, rgmp_training_loss

PAPER_SCALES = (0.5, 0.75, 1.0)


def aggregate_with_background(background: Tensor, objects: Tensor, eps: float = 1e-7) -> Tensor:
    """Soft aggregation (RGMP Eq. 1) with an explicitly estimated background.

    background (B,1,*sp), objects (B,O,*sp) -> (B,O+1,*sp), channel 0 background:
        q = clamp(p, eps, 1 - eps),  r = q / (1 - q),  out_m = r_m / sum_j r_j.

    ``vos_kernels.soft_aggregate`` estimates the background itself, as prod_o (1 - p_o), while
    RGMP's background comes from its own network pass (1 - p_all). So the O+1 channels go to
    the kernel as "objects"; the kernel's extra product channel (index 0) is dropped and the
    rest renormalised, which removes its term from the denominator exactly:
    (r_m / (r_extra + S)) / (S / (r_extra + S)) = r_m / S.
    """
    stacked = torch.cat([background, objects], dim=1)
    aggregated = vos_kernels.soft_aggregate(stacked, eps=eps)[:, 1:]
    return aggregated / aggregated.sum(dim=1, keepdim=True)


@dataclass(eq=False)
class RGMPState(VideoState):
    """Per-video RGMP state (all at the padded working size, bounded: no growth with time).

    padding: (left, right, top, bottom); size: unpadded (H, W).
    object_refs: scale -> (O, C5, h, w) reference r5 per object.
    union_ref: scale -> (1, C5, h, w) reference r5 of the union mask (two or more objects).
    guidance: (1, O+1, Hp, Wp) aggregated probabilities of the last frame (the next guidance).
    refs: (K, C5, h, w) the references a propagation reads at scale 1.0, in guidance order: the
        union's first when there are two or more objects (K = O + 1), else the object's (K = 1);
        kept for the tracking step (single-scale RGMP only, else None).
    """

    padding: tuple[int, int, int, int] | None = None
    size: tuple[int, int] | None = None
    object_refs: dict[float, Tensor] = field(default_factory=dict)
    union_ref: dict[float, Tensor] = field(default_factory=dict)
    guidance: Tensor | None = None
    refs: Tensor | None = None


class RGMP(VOSMethod):
    """Reference-Guided Mask Propagation (Oh et al., CVPR 2018).

    Args:
        backbone: "resnet50" (paper) or "resnet18" (a lighter, non-paper trunk for CPU demos).
        decoder_channels: 256 in the paper; smaller values are for CPU demos only.
        frozen_bn: freeze the trunk's batch norms (paper / public code).
        scales: inference scales, averaged; ``(1.0,)`` by default, ``(0.5, 0.75, 1.0)`` is the
            paper's multi-scale setting (``PAPER_SCALES``).
        resizer: "opencv" (the public code's cv2 INTER_LINEAR) or "torch" (F.interpolate,
            within ~1e-5); None picks opencv for CPU tensors and torch on other devices.
        eps: clamp of the soft aggregation (1e-7 in the public code).
        train_stage: "pretrain" (simulated pairs from still images, strategies 1 and 2) or
            "finetune" (video clips with recurrence, BPTT); see :mod:`.training`.
        backbone_weights: optional torchvision ResNet weight file (e.g. ImageNet
            ``resnet50-*.pth``, the paper's start) loaded strictly into the encoder trunk; the
            mask stem (``conv1_extra``, the public ``conv1_p``) keeps its initialisation. Not
            stored in checkpoints (the trained weights are).
    """

    name = "rgmp"
    state_type = RGMPState
    cuda_graph_modules = ("network.encoder", "network.decoder")

    def __init__(self, backbone: str = "resnet50", decoder_channels: int = 256,
                 frozen_bn: bool = True, scales: tuple[float, ...] | list[float] = (1.0,),
                 resizer: str | None = None, eps: float = 1e-7, train_stage: str = "finetune",
                 backbone_weights: str | None = None):
        super().__init__()
        scales = tuple(float(s) for s in scales)
        if not scales or any(not 0.0 < s <= 1.0 for s in scales) or len(set(scales)) != len(scales):
            raise VOSInputError(f"RGMP: scales must be distinct values in (0, 1], got {scales}")
        if resizer is not None and resizer not in rs.RESIZERS:
            raise VOSInputError(f"RGMP: resizer must be None or one of {rs.RESIZERS}, got {resizer!r}")
        check_stage(train_stage)
        self.network = RGMPNetwork(backbone, decoder_channels, frozen_bn)
        if backbone_weights is not None:
            from vos_models.backbones import load_backbone_weights
            load_backbone_weights(self.network.encoder.backbone, backbone_weights)  # strict; fc dropped
        self.scales = scales
        self.resizer = resizer
        self.eps = float(eps)
        self.train_stage = train_stage

    # ------------------------------------------------------------------ inference
    def _resizer(self, x: Tensor) -> str:
        return self.resizer or rs.default_resizer(x.device)

    def _encode_refs(self, frame: Tensor, masks: Tensor) -> dict[float, Tensor]:
        """Padded frame (1,3,Hp,Wp) and masks (K,Hp,Wp) -> scale -> reference r5 (K,C5,h,w)."""
        encoder, resizer = self.network.encoder, self._resizer(frame)
        refs = {}
        for scale in self.scales:
            size = rs.scaled_size(frame.shape[-2], frame.shape[-1], scale)
            stem = encoder.rgb_stem(rs.resize_bilinear(frame, size, resizer))
            refs[scale] = encoder(None, rs.resize_bilinear(masks[:, None], size, resizer), stem)[0]
        return refs

    def _propagate(self, frame: Tensor, guidance: Tensor, refs: dict[float, Tensor]) -> Tensor:
        """Padded frame (1,3,Hp,Wp), guidance masks (K,Hp,Wp) and per-scale references
        (K,C5,h,w) -> object probabilities (K,1,Hp,Wp), averaged over the scales."""
        encoder, decoder, resizer = self.network.encoder, self.network.decoder, self._resizer(frame)
        full = tuple(frame.shape[-2:])
        total = torch.zeros(guidance.shape[0], 1, *full, dtype=torch.float32, device=frame.device)
        for scale in self.scales:
            size = rs.scaled_size(full[0], full[1], scale)
            stem = encoder.rgb_stem(rs.resize_bilinear(frame, size, resizer))
            r5, r4, r3, r2 = encoder(None, rs.resize_bilinear(guidance[:, None], size, resizer), stem)
            prob = torch.softmax(decoder(r5, refs[scale], r4, r3, r2), dim=1)[:, 1:2]
            total += rs.resize_bilinear(prob, full, resizer).float()
        return total / len(self.scales)

    def _propagation_refs(self, state: RGMPState, objects: int) -> dict[float, Tensor]:
        """scale -> the references in guidance order for ``objects`` objects (those the
        references were encoded for): (union, objects...) for two or more, the object's alone
        for one."""
        if objects == 1:
            return dict(state.object_refs)
        return {s: torch.cat([state.union_ref[s], state.object_refs[s]]) for s in self.scales}

    def _predict(self, frame: Tensor, prev: Tensor, refs: dict[float, Tensor]) -> Tensor:
        """Padded frame (1,3,Hp,Wp), last probabilities prev (1,O+1,Hp,Wp) and the propagation
        references (:meth:`_propagation_refs`) -> probabilities (1, O+1, Hp, Wp)."""
        objects_prev = prev[0, 1:]
        if objects_prev.shape[0] == 1:
            prob = self._propagate(frame, objects_prev, refs)
            return torch.cat([1 - prob, prob], dim=1)
        guidance = torch.cat([objects_prev.sum(0, keepdim=True), objects_prev])
        prob = self._propagate(frame, guidance, refs).transpose(0, 1)  # (1, O+1, Hp, Wp)
        return aggregate_with_background(1 - prob[:, :1], prob[:, 1:], self.eps)

    # The tracking step (engine/interface.py): single-scale RGMP only. With several scales the
    # frame is resized per scale (OpenCV on the CPU, the public code's resizer) and every scale
    # has its own references: not one graph over a fixed set of tensors.
    tracked_outputs = ("guidance",)
    # one object: the public Infer_SO path (no union reference, no aggregation); several: Infer_MO
    any_object_count = False

    @property
    def tracked_inputs(self) -> tuple[str, ...]:
        return ("guidance", "refs") if self.scales == (1.0,) else ()

    def track(self, frame: Tensor, guidance: Tensor, refs: Tensor) -> tuple[Tensor, Tensor]:
        """A frame without new masks (single-scale RGMP): frame (1, 3, H, W), the state's
        guidance (1, O+1, Hp, Wp; the last padded probabilities) and refs (K, C5, h, w) ->
        (probabilities (1, O+1, H, W), the new guidance)."""
        padding = rs.padding_for(frame.shape[-2], frame.shape[-1])
        new = self._predict(pad(frame.float(), padding), guidance, {1.0: refs})
        return crop(new, padding), new

    def _check_inputs(self, state: RGMPState, frame: Tensor, new_masks: Tensor | None) -> None:
        if frame.dim() != 4 or frame.shape[:2] != (1, 3) or not frame.is_floating_point():
            raise ValueError(f"RGMP.step: frame must be float (1, 3, H, W), got {tuple(frame.shape)} "
                             f"{frame.dtype}")
        size = tuple(frame.shape[-2:])
        if state.size is not None and size != state.size:
            raise ValueError(f"RGMP.step: frame is {size} but this video's frames are {state.size}")
        if new_masks is not None and (new_masks.dim() != 3 or tuple(new_masks.shape[-2:]) != size):
            raise ValueError(f"RGMP.step: new_masks must be (K, {size[0]}, {size[1]}), "
                             f"got {tuple(new_masks.shape)}")

    @torch.no_grad()
    def step(self, state: RGMPState, frame: Tensor, new_masks: Tensor | None,
             new_ids: list[int]) -> Tensor:
        """frame (1,3,H,W) in [0,1]; new_masks (K,H,W) {0,1} or None -> (1, O+1, H, W)."""
        self._check_inputs(state, frame, new_masks)
        if state.size is None:
            state.size = tuple(frame.shape[-2:])
            state.padding = rs.padding_for(*state.size)
        known = state.num_objects
        if known and not new_ids and self.tracked_inputs:  # the tracking step (single scale)
            prob, state.guidance = self.track(frame, state.guidance, state.refs)
            return prob
        fresh = state.add_objects(new_masks, new_ids)
        frame = pad(frame.float(), state.padding)
        prob = self._predict(frame, state.guidance, self._propagation_refs(state, known)) if known else None
        if new_ids:
            masks = pad(new_masks.to(frame), state.padding)
            prob = merge_new_masks(prob, masks, new_ids, state.num_objects)
            # Each given object's reference becomes this frame and its mask: appended for a new
            # object, replaced for a corrected one.
            new_refs = self._encode_refs(frame, masks)
            corrected = torch.as_tensor([i - 1 for i in new_ids[:len(new_ids) - len(fresh)]], device=frame.device)
            refs = {}
            for s, r in new_refs.items():
                old = state.object_refs[s].clone() if known else r[:0]
                if len(corrected):
                    old[corrected] = r[:len(corrected)]
                refs[s] = torch.cat([old, r[len(corrected):]])
            state.object_refs = refs
            if state.num_objects >= 2:
                state.union_ref = self._encode_refs(frame, prob[0, 1:].sum(0, keepdim=True))
            if self.tracked_inputs:
                state.refs = self._propagation_refs(state, state.num_objects)[1.0]
        if prob is None:  # no object yet: everything is background
            return frame.new_ones(1, 1, *state.size)
        state.guidance = prob
        return crop(prob, state.padding)

    # ------------------------------------------------------------------ training
    def training_loss(self, batch: dict) -> tuple[Tensor, dict[str, float]]:
        """Loss of the stage ``train_stage`` ("pretrain" or "finetune"); see :mod:`.training`."""
        return rgmp_training_loss(self, batch)
