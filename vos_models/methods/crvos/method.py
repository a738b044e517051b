"""CRVOS: Clue Refining Network for Video Object Segmentation (Cho et al., ICIP 2020).

Per frame and per object, a ResNet encoder (output stride 16) extracts features once, and a
decoder of three refine modules refines the object's *Clue* (its previous coarse mask at 1/16
plus three coordinate channels, see ``clue.py``) into a two-way score at full resolution. The
per-object softmaxes are merged with the public min-background odds rule (``aggregate.py``);
each object's next Clue is the 16 x 16 average of its merged probability.

Inference follows the public test loop of CV-IP/CRVOS (``CRVOS.forward``) exactly:
    x   = (rgb - mean) / std, ImageNet mean/std, RGB in [0, 1]
    pad = reflect to a multiple of 16 (odd pixel left/top), masks padded the same way (``methods.padding``)
    clue_k <- avg_pool16([1 - m_k, m_k]) on the frame that brings object k
    q_k = softmax(decoder(encoder(x), clue_k)); P = aggregate(q); clue_k <- avg_pool16([1-P_k, P_k])
Output probabilities are cropped back to the input size.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from vos_models.backbones.resnet import load_backbone_weights, normalize_imagenet
from vos_models.engine.interface import VideoState, VOSMethod, merge_new_masks
from vos_models.errors import VOSInputError

from ..padding import Padding, crop, pad, stride_padding
from ..planar import two_way_softmax
from .aggregate import AGGREGATIONS, aggregate_objects
from .clue import CLUE_STRIDE, build_clue, coarse_mask
from .network import RefineDecoder, build_encoder, encoder_channels, encoder_features, resolve_finetune_layers
from .training import crvos_training_loss


@dataclass(eq=False)
class CRVOSState(VideoState):
    """Each object's Clue mask ``clue_mask (O, 2, Hp/16, Wp/16)`` and the video's frame size
    (H, W): constant memory however long the video."""

    clue_mask: Tensor | None = None
    frame_size: tuple[int, int] | None = None


class CRVOS(VOSMethod):
    """CRVOS as a ``VOSMethod`` (registry name ``"crvos"``).

    Args:
        backbone: ``"resnet50"`` (paper, public checkpoint) or ``"resnet18"`` (a lighter
            variant that is not in the paper, for CPU training demos).
        finetune_layers: backbone layers that train (public: ``("layer4",)``); ``"all"``.
        s16_width, width: decoder widths (paper 256 and 128).
        aggregation: ``"public"`` (CRVOS's min-background rule, default) or
            ``"soft_aggregate"`` (RGMP's rule through ``vos_kernels.soft_aggregate``).
        backbone_weights: a torchvision ResNet weight file (e.g. ImageNet ``resnet50-*.pth``)
            to start the trunk from, as the paper does before training; not saved in the
            config (checkpoints hold the weights themselves).
    """

    name = "crvos"
    state_type = CRVOSState
    cuda_graph_modules = ("backbone", "refine")

    def __init__(self, backbone: str = "resnet50", finetune_layers=("layer4",),
                 s16_width: int = 256, width: int = 128, aggregation: str = "public",
                 backbone_weights: str | None = None):
        super().__init__()
        if aggregation not in AGGREGATIONS:
            raise VOSInputError(f"CRVOS: aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        self.aggregation = aggregation
        self.backbone = build_encoder(backbone)
        if backbone_weights is not None:
            load_backbone_weights(self.backbone, backbone_weights)  # strict; fc dropped
        self.refine = RefineDecoder(*encoder_channels(self.backbone), s16_width, width)
        self.finetune_layers = resolve_finetune_layers(finetune_layers)
        for layer_name, module in self.backbone.named_children():
            module.requires_grad_(layer_name in self.finetune_layers)

    # ------------------------------------------------------------------ modes
    def train(self, mode: bool = True):
        """As the public ``ResNetS16.train``: frozen backbone layers stay in eval mode."""
        super().train(mode)
        for layer_name, module in self.backbone.named_children():
            if layer_name not in self.finetune_layers:
                module.train(False)
        return self

    # ------------------------------------------------------------- internals
    def prepare(self, images: Tensor) -> tuple[Tensor, Padding]:
        """RGB ``(N, 3, H, W)`` in [0, 1] -> normalised, reflect-padded images and the padding."""
        padding = stride_padding(images.shape[-2], images.shape[-1], CLUE_STRIDE)
        # Subtract then divide in float32, as torchvision's Normalize does.
        return pad(normalize_imagenet(images), padding, "reflect"), padding

    def _object_scores(self, feats: dict[str, Tensor], clue_mask: Tensor) -> Tensor:
        """Features of one frame (batch 1 or N) and Clue masks ``(N, 2, h, w)`` -> scores ``(N, 2, Hp, Wp)``."""
        return self.refine(self.refine.project(feats), build_clue(clue_mask))

    # -------------------------------------------------------------- inference
    def step(self, state: CRVOSState, frame: Tensor, new_masks: Tensor | None,
             new_ids: list[int]) -> Tensor:
        """One frame. ``frame (1, 3, H, W)`` in [0, 1]; returns ``(1, O + 1, H, W)`` probabilities."""
        _check_frame(frame)
        size = tuple(frame.shape[-2:])
        if state.frame_size is None:
            state.frame_size = size
        elif state.frame_size != size:
            raise ValueError(f"step: frame size {size} differs from the video's first frame {state.frame_size}")
        if new_masks is not None and (new_masks.dim() != 3 or tuple(new_masks.shape[-2:]) != size):
            raise ValueError(f"step: new_masks must be (K, H, W) with (H, W) = {size}, "
                             f"got {tuple(new_masks.shape)}")
        if state.num_objects == 0 and not new_ids:
            raise ValueError("step: no object is known yet; the first frame must bring masks")

        if new_masks is None and not new_ids:  # checked above: objects are known
            prob, state.clue_mask = self.track(frame, state.clue_mask)
            return prob
        dtype = next(self.refine.parameters()).dtype
        images, padding = self.prepare(frame.to(dtype))
        prob = self._predict(images, state.clue_mask) if state.num_objects > 0 else None
        state.add_objects(new_masks, new_ids)  # checks the mask count and the numbering (corrections too)
        if new_ids:
            padded_masks = pad(new_masks[None].to(dtype), padding, "reflect")[0]
            prob = merge_new_masks(prob, padded_masks, new_ids, state.num_objects)
        state.clue_mask = coarse_mask(prob[0, 1:])
        return crop(prob, padding)

    tracked_inputs = ("clue_mask",)
    tracked_outputs = ("clue_mask",)

    def track(self, frame: Tensor, clue_mask: Tensor) -> tuple[Tensor, Tensor]:
        """A frame without new masks: ``frame (1, 3, H, W)``, ``clue_mask (O, 2, Hp/16, Wp/16)``
        -> (probabilities ``(1, O + 1, H, W)``, the next ``clue_mask``)."""
        dtype = next(self.refine.parameters()).dtype
        images, padding = self.prepare(frame.to(dtype))
        prob = self._predict(images, clue_mask)
        return crop(prob, padding), coarse_mask(prob[0, 1:])

    def _predict(self, images: Tensor, clue_mask: Tensor) -> Tensor:
        """Prepared images (1, 3, Hp, Wp) and Clue masks -> aggregated (1, O + 1, Hp, Wp)."""
        feats = encoder_features(self.backbone, images)
        # Aggregation and the Clue stay float32 under low-precision autocast.
        q = two_way_softmax(self._object_scores(feats, clue_mask))          # (O, 2, Hp, Wp)
        return aggregate_objects(q.unsqueeze(0), self.aggregation)         # (1, O+1, Hp, Wp)

    # --------------------------------------------------------------- training
    def training_loss(self, batch: dict) -> tuple[Tensor, dict[str, float]]:
        """Unrolled NLL over a clip, one object per clip (paper §2.4-2.5); see :mod:`.training`."""
        return crvos_training_loss(self, batch)


def _check_frame(frame: Tensor) -> None:
    if not isinstance(frame, Tensor) or frame.dim() != 4 or frame.shape[:2] != (1, 3):
        raise ValueError(f"step: frame must be a (1, 3, H, W) tensor, got "
                         f"{tuple(frame.shape) if isinstance(frame, Tensor) else type(frame).__name__}")
    if not frame.is_floating_point():
        raise ValueError(f"step: frame must be float RGB in [0, 1], got dtype {frame.dtype}")
    if min(frame.shape[-2:]) < 2 * CLUE_STRIDE:  # the input video is too small: the user's to fix
        raise VOSInputError(f"step: CRVOS needs frames of at least {2 * CLUE_STRIDE} x {2 * CLUE_STRIDE} "
                         f"pixels, got {tuple(frame.shape[-2:])}")
