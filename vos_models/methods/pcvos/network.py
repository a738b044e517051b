"""The PCVOS network: encoders, key projections, intra-clip refinement, decoder.

Shapes use N = frames in a batch, O = objects, L = clip length, h x w = the stride-16 grid.

- `encode_key(x)`: x (N, 3, H, W) normalised, H and W multiples of 16 ->
  `KeyFeatures(k16 (N, Ck, h, w), qv16 (N, Cq, h, w), f16, f8, f4, k_intra (N, Ci, h, w) | None)`.
  The key encoder is a ResNet trunk to stride 16 (ResNet-50 in the paper; torchvision names).
- `encode_value(x, f16, masks)`: x (N, 3, H, W), f16 (N, C16, h, w), masks (N, O, H, W) soft
  -> (N, O, Cv, h, w). Per object the value encoder (a ResNet-18 with biased convs reading
  [RGB, mask, sum of the other objects' masks]) is fused with f16 (`FeatureFusionBlock`).
- `refine(k_intra, readout)`: the ICR over clips, (B, L, Ci, h, w) and (B, O, L, Cv, h, w) ->
  (B, O, L, Cv, h, w).
- `decode(value, qv16, f8, f4)`: value (N, Cv, h, w) -> logits (N, 1, 4h, 4w) at stride 4;
  `decode_objects(values (O, N, Cv, h, w), qv16, f8, f4)` -> (O, N, 1, 4h, 4w) decodes every
  object with the frame-only part of the decoder computed once per frame.
- `upsample_logits`: x4 bilinear (align_corners=False), as the public decoder ends.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vos_models.backbones.resnet import ResNet

from .blocks import Decoder, FeatureFusionBlock, KeyProjection
from .refinement import IntraClipRefinement


#: Output stride of the key encoder: frames are padded to (inference) or must be (training)
#: multiples of it.
STRIDE = 16


class KeyFeatures(NamedTuple):
    k16: Tensor
    qv16: Tensor
    f16: Tensor
    f8: Tensor
    f4: Tensor
    k_intra: Tensor | None


class ValueEncoder(nn.Module):
    """ResNet-18 (biased convs, 5 input channels) to stride 16, fused with the key f16."""

    def __init__(self, key_f16_dim: int, value_dim: int):
        super().__init__()
        self.trunk = ResNet("resnet18", num_stages=3, extra_in_channels=2, extra_stem="concat",
                            conv_bias=True)
        self.fuser = FeatureFusionBlock(self.trunk.feature_channels["layer3"] + key_f16_dim, value_dim)

    def forward(self, image: Tensor, key_f16: Tensor, masks: Tensor) -> Tensor:
        n, o = masks.shape[:2]
        if o == 1:
            others = torch.zeros_like(masks)
        else:  # explicit sums of the other objects (not total - self: keeps it exact)
            others = torch.stack([masks[:, [j for j in range(o) if j != i]].sum(1) for i in range(o)], 1)
        image = image.unsqueeze(1).expand(-1, o, -1, -1, -1).reshape(n * o, *image.shape[1:])
        extra = torch.stack([masks, others], 2).reshape(n * o, 2, *masks.shape[2:])
        x = self.trunk(image, extra)["layer3"]
        x = self.fuser(x, key_f16)  # f16 once per frame: the fuser computes its part once
        return x.view(n, o, *x.shape[1:])


class PCVOSNetwork(nn.Module):
    """All learnable parts of PCVOS. Defaults are the paper's (ResNet-50 keys, Ck 64, Cv 512,
    ICR width 256, 2 blocks, 1 head, window (2, 7, 7)); `key_backbone="resnet18"` and smaller
    widths give a light variant for CPU experiments (not a paper configuration)."""

    def __init__(self, key_backbone: str = "resnet50", key_dim: int = 64, value_dim: int = 512,
                 icr_dim: int = 256, icr_depth: int = 2, icr_heads: int = 1,
                 icr_window: tuple[int, int, int] = (2, 7, 7), use_icr: bool = True,
                 decoder_dim: int = 256):
        super().__init__()
        self.key_encoder = ResNet(key_backbone, num_stages=3)
        ch = self.key_encoder.feature_channels
        c16, c8, c4 = ch["layer3"], ch["layer2"], ch["layer1"]
        self.value_encoder = ValueEncoder(c16, value_dim)
        self.key_proj = KeyProjection(c16, key_dim)
        self.key_comp = nn.Conv2d(c16, value_dim, 3, padding=1)
        if use_icr:
            self.input_proj = KeyProjection(c16, icr_dim)
            self.refine_transformer = IntraClipRefinement(icr_dim, value_dim, icr_depth, icr_heads,
                                                          tuple(icr_window))
        else:
            self.input_proj = None
            self.refine_transformer = None
        self.decoder = Decoder(2 * value_dim, c8, c4, value_dim, decoder_dim)

    def encode_key(self, x: Tensor) -> KeyFeatures:
        feats = self.key_encoder(x)
        f16, f8, f4 = feats["layer3"], feats["layer2"], feats["layer1"]
        k_intra = self.input_proj(f16) if self.input_proj is not None else None
        return KeyFeatures(self.key_proj(f16), self.key_comp(f16), f16, f8, f4, k_intra)

    def encode_value(self, x: Tensor, f16: Tensor, masks: Tensor) -> Tensor:
        return self.value_encoder(x, f16, masks)

    def refine(self, k_intra: Tensor | None, readout: Tensor) -> Tensor:
        """k_intra (B, L, Ci, h, w) shared by the objects; readout (B, O, L, Cv, h, w) -> same."""
        if self.refine_transformer is None:
            return readout
        key = k_intra.permute(0, 1, 3, 4, 2)                 # (B, L, h, w, Ci)
        value = readout.permute(0, 1, 2, 4, 5, 3)            # (B, O, L, h, w, Cv)
        return self.refine_transformer(key, value).permute(0, 1, 2, 5, 3, 4)

    def decode(self, value: Tensor, qv16: Tensor, f8: Tensor, f4: Tensor) -> Tensor:
        return self.decoder(torch.cat([value, qv16], 1), f8, f4)

    def decode_objects(self, values: Tensor, qv16: Tensor, f8: Tensor, f4: Tensor, *,
                       one_object_at_a_time: bool = False) -> Tensor:
        """values (O, N, Cv, h, w), the frames' qv16, f8, f4 (N, ...) -> logits (O, N, 1, 4h, 4w).

        `decode` for every object, with the frame-only part of the decoder (skip convs, qv16's
        share of the first block) computed once per frame instead of once per object. The
        objects go through the rest as one batch of O * N, or `one_object_at_a_time` (N each:
        the same outputs with 1/O of the activation memory)."""
        shared = self.decoder.shared(qv16, f8, f4)
        if one_object_at_a_time:
            return torch.stack([self.decoder.decode_objects(v, shared) for v in values])
        return self.decoder.decode_objects(values.flatten(0, 1), shared).unflatten(0, values.shape[:2])


def upsample_logits(logits: Tensor) -> Tensor:
    """Stride-4 logits -> input resolution: bilinear x4, align_corners=False (public Decoder)."""
    return F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=False)
