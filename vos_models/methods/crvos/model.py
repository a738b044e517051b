"""CRVOS: Clue Refining Network for Video Object Segmentation (Cho et al., ICIP 2020).

Per frame and per object, a ResNet encoder (output stride 16) extracts features once, and a
decoder of three refine modules refines the object's *Clue* (its previous coarse mask at 1/16
plus three coordinate channels, see ``clue.py``) into a two-way score at full resolution. The
per-object softmaxes are merged with the public min-background odds rule (``aggregate.py``);
each object's next Clue is the 16 x 16 average of its merged probability.

Inference follows the public test loop of CV-IP/CRVOS (``CRVOS.forward``) exactly:
    x   = (rgb - mean) / std, ImageNet mean/std, RGB in [0, 1]
    pad = reflect to a multiple of 16 (odd pixel left/top), masks padded the same way
    clue_k <- avg_pool16([1 - m_k, m_k]) on the frame that brings object k
    q_k = softmax(decoder(encoder(x), clue_k)); P = aggregate(q); clue_k <- avg_pool16([1-P_k, P_k])
Output probabilities are cropped back to the input size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vos_models.backbones.resnet import load_backbone_weights, normalize_imagenet
from vos_models.engine.interface import VideoState, VOSMethod, merge_new_masks
from vos_models.training.losses import pick_one_object

from .aggregate import AGGREGATIONS, aggregate_objects
from .clue import CLUE_STRIDE, build_clue, coarse_mask
from .decoder import RefineDecoder
from .encoder import build_encoder, encoder_channels, encoder_features, resolve_finetune_layers
from .padding import reflect_pad, required_padding, unpad


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
    clip_wise = False
    #: fixed-shape submodules the inference engine may replay as CUDA graphs
    cuda_graph_modules = ("backbone", "refine")

    def __init__(self, backbone: str = "resnet50", finetune_layers=("layer4",),
                 s16_width: int = 256, width: int = 128, aggregation: str = "public",
                 backbone_weights: str | None = None):
        super().__init__()
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        # What save_checkpoint records, also when the model is built without the registry.
        self.build_config = dict(backbone=backbone, finetune_layers=finetune_layers,
                           s16_width=s16_width, width=width, aggregation=aggregation)
        self.aggregation = aggregation
        self.backbone = build_encoder(backbone)
        if backbone_weights is not None:
            load_backbone_weights(self.backbone, backbone_weights)  # strict; fc dropped
        self.refine = RefineDecoder(*encoder_channels(self.backbone), s16_width, width)
        self.finetune_layers = resolve_finetune_layers(finetune_layers)
        for layer_name, module in self.backbone.named_children():
            module.requires_grad_(layer_name in self.finetune_layers)

    # ----------------------------------------------------------------- config
    @property
    def build_config(self) -> dict:
        """What ``save_checkpoint`` records to rebuild the model: the constructor arguments
        except ``backbone_weights`` (the checkpoint holds the weights; the file may be gone)."""
        return dict(self._build_config)

    @build_config.setter
    def build_config(self, config: dict) -> None:  # also called by the registry's build_method
        self._build_config = {k: v for k, v in config.items() if k != "backbone_weights"}

    # ------------------------------------------------------------------ modes
    def train(self, mode: bool = True):
        """As the public ``ResNetS16.train``: frozen backbone layers stay in eval mode."""
        super().train(mode)
        for layer_name, module in self.backbone.named_children():
            if layer_name not in self.finetune_layers:
                module.train(False)
        return self

    # ------------------------------------------------------------- internals
    def _prepare(self, images: Tensor) -> tuple[Tensor, tuple[int, int, int, int]]:
        """RGB ``(N, 3, H, W)`` in [0, 1] -> normalised, reflect-padded images and the padding."""
        padding = required_padding(images.shape[-2], images.shape[-1], CLUE_STRIDE)
        # Subtract then divide in float32, as torchvision's Normalize does.
        return reflect_pad(normalize_imagenet(images), padding), padding

    def _object_scores(self, feats: dict[str, Tensor], clue_mask: Tensor) -> Tensor:
        """Features of one frame (batch 1 or N) and Clue masks ``(N, 2, h, w)`` -> scores ``(N, 2, Hp, Wp)``."""
        return self.refine(self.refine.project(feats), build_clue(clue_mask))

    # -------------------------------------------------------------- inference
    def new_video(self, num_objects_hint: int | None = None) -> VideoState:
        """State: each object's Clue mask ``clue_mask (O, 2, Hp/16, Wp/16)``; constant memory."""
        return VideoState(num_objects_hint, clue_mask=None, frame_size=None)

    def step(self, state: VideoState, frame: Tensor, new_masks: Tensor | None,
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

        dtype = next(self.refine.parameters()).dtype
        images, padding = self._prepare(frame.to(dtype))
        prob = None
        if state.num_objects > 0:
            feats = encoder_features(self.backbone, images)
            # Aggregation and the Clue stay float32 under low-precision autocast.
            q = self._object_scores(feats, state.clue_mask).float().softmax(dim=1)   # (O, 2, Hp, Wp)
            prob = aggregate_objects(q.unsqueeze(0), self.aggregation)        # (1, O+1, Hp, Wp)
        known = state.num_objects
        state.add_objects(new_masks, new_ids)  # checks the mask count and the numbering
        if new_ids:
            padded_masks = reflect_pad(new_masks[None].to(dtype), padding)[0]
            prob = merge_new_masks(prob, padded_masks, new_ids, known + len(new_ids))
        state.clue_mask = coarse_mask(prob[0, 1:])
        state.frame_index += 1
        return unpad(prob, padding)

    # --------------------------------------------------------------- training
    def training_loss(self, batch: dict) -> tuple[Tensor, dict[str, float]]:
        """Unrolled training loss (paper §2.4-2.5: NLL, one randomly chosen object per clip).

        batch: ``frames (B, T, 3, H, W)`` in [0, 1], ``masks (B, T, O, H, W)`` {0, 1},
        ``num_objects (B,)``. For each clip one object k (uniform over its ``num_objects``; a clip
        without objects has an all-background target, as in RGMP's loss) is tracked from its frame-0 mask through frames 1..T-1, the Clue flowing from frame to frame
        with gradients (BPTT), as at inference: ``clue <- avg_pool16([1-P, P])`` with ``P`` the
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

        images, padding = self._prepare(frames[:, 1:].flatten(0, 1))
        feats = encoder_features(self.backbone, images)
        projected = self.refine.project(feats)
        projected = {k: v.unflatten(0, (b, t - 1)) for k, v in projected.items()}
        clue_mask = coarse_mask(reflect_pad(target[:, 0:1].float(), padding)[:, 0])
        losses, ious = [], []
        for step in range(t - 1):
            score = self.refine({k: v[:, step] for k, v in projected.items()}, build_clue(clue_mask))
            log_prob = F.log_softmax(score, dim=1)
            label = target[:, step + 1].long()
            losses.append(F.nll_loss(unpad(log_prob, padding), label))
            prob = aggregate_objects(log_prob.exp().unsqueeze(1), self.aggregation)
            clue_mask = coarse_mask(prob[:, 1])
            with torch.no_grad():
                ious.append(_batch_iou(unpad(score, padding).argmax(dim=1), label))
        loss = torch.stack(losses).mean()
        return loss, {"loss": loss.item(), "iou": torch.stack(ious).mean().item()}


def _batch_iou(pred: Tensor, label: Tensor) -> Tensor:
    """Mean foreground IoU of ``(B, H, W)`` label maps (empty-vs-empty counts as 1)."""
    inter = ((pred == 1) & (label == 1)).flatten(1).sum(1).float()
    union = ((pred == 1) | (label == 1)).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union)).mean()


def _check_frame(frame: Tensor) -> None:
    if not isinstance(frame, Tensor) or frame.dim() != 4 or frame.shape[:2] != (1, 3):
        raise ValueError(f"step: frame must be a (1, 3, H, W) tensor, got "
                         f"{tuple(frame.shape) if isinstance(frame, Tensor) else type(frame).__name__}")
    if not frame.is_floating_point():
        raise ValueError(f"step: frame must be float RGB in [0, 1], got dtype {frame.dtype}")
    if min(frame.shape[-2:]) < 2 * CLUE_STRIDE:
        raise ValueError(f"step: CRVOS needs frames of at least {2 * CLUE_STRIDE} x {2 * CLUE_STRIDE} "
                         f"pixels, got {tuple(frame.shape[-2:])}")
