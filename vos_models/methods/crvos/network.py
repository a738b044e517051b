"""CRVOS network: the ResNet encoder at output stride 16 and the refine decoder.

Encoder (paper §2.1): a torchvision-layout ResNet at output stride 16. The public ``ResNetS16``
(CV-IP/CRVOS ``models/backbones/resnet.py``) is a torchvision v1.5 ResNet whose layer4 keeps
stride 1: block 0 has conv2 and downsample strides 1, blocks 1.. use dilation 2 (padding 2) in conv2. That is torchvision's ``replace_stride_with_dilation=(False,
False, True)``, i.e. the shared trunk with ``output_stride=16``.

Features used by the decoder: ``s4`` = layer1 output (1/4), ``s8`` = layer2 output (1/8),
``s16`` = layer4 output (1/16). layer3 only feeds layer4; the stem output is not used. The
ImageNet classifier ``fc`` of the public state dict is never used, so the trunk has none.

The public model freezes every backbone layer except ``finetune_layers`` (default layer4):
frozen layers get ``requires_grad=False`` and keep their BatchNorm in eval mode even when the
model trains (``CRVOS.train``). ``finetune_layers="all"`` trains the whole trunk.

Decoder (paper §2.3): three refine modules with deconvolution and skip connections. Shapes for an input of H x W (multiples of 16), N decoder batch entries (objects x batch):

    s16 (N, C16, H/16, W/16) --conv_s16 1x1+ReLU--> (N, W16, .)  ++ Clue (N, 5, .)
        --blend_s16 3x3+ReLU--> (N, W, H/16, W/16) --deconv1_1 k4 s2 p1--> out_16 (N, 2, H/8,  W/8)
    s8  --conv_s8 1x1+ReLU--> (N, W, .) ++ out_16
        --blend_s8 3x3+ReLU--> --deconv2   k4 s2 p1--> out_8  (N, 2, H/4, W/4)
    s4  --conv_s4 1x1+ReLU--> (N, W, .) ++ out_8
        --blend_s4 3x3+ReLU--> --deconv3   k3 s1 p1--> out_4  (N, 2, H/4, W/4)
    [deconv1_2(out_16) (k4 s2 p1: H/8 -> H/4), out_8, out_4] (N, 6, H/4, W/4)
        --predictor ConvTranspose k6 s4 p1--> score (N, 2, H, W)

Channel 0 of the score is "not this object", channel 1 "this object". The paper widths are
W16 = 256 and W = 128 (``REFINE`` in CV-IP/CRVOS). Every transposed convolution has a bias and
no activation after it (the 2-channel outputs are logits that later layers refine).

The 1x1 skip convolutions do not depend on the object, so ``project`` runs them once per frame
and ``forward`` reuses the result for every object (the public code recomputes them per object;
the values are the same).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from vos_models.backbones.resnet import ResNet
from vos_models.errors import VOSInputError

from .clue import CLUE_CHANNELS

BACKBONES = ("resnet50", "resnet18")
BACKBONE_LAYERS = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")


def build_encoder(name: str) -> ResNet:
    """An output-stride-16 ResNet with torchvision parameter names (randomly initialised)."""
    if name not in BACKBONES:
        raise VOSInputError(f"CRVOS: backbone must be one of {BACKBONES}, got {name!r}")
    return ResNet(name, output_stride=16, with_fc=False)


def encoder_channels(encoder: ResNet) -> tuple[int, int, int]:
    """Channels of ``(s16, s8, s4)``: 2048, 512, 256 for ResNet-50; 512, 128, 64 for ResNet-18."""
    channels = encoder.feature_channels
    return channels["layer4"], channels["layer2"], channels["layer1"]


def encoder_features(encoder: ResNet, x: Tensor) -> dict[str, Tensor]:
    """Normalised, padded images ``(N, 3, H, W)`` -> ``{"s4", "s8", "s16"}`` feature maps."""
    features = encoder(x)
    return {"s4": features["layer1"], "s8": features["layer2"], "s16": features["layer4"]}


def resolve_finetune_layers(finetune_layers) -> tuple[str, ...]:
    """``"all"`` or an iterable of trunk layer names -> a validated tuple of names."""
    if finetune_layers == "all":
        return BACKBONE_LAYERS
    if isinstance(finetune_layers, str):
        finetune_layers = (finetune_layers,)
    layers = tuple(finetune_layers)
    unknown = [name for name in layers if name not in BACKBONE_LAYERS]
    if unknown:
        raise VOSInputError(f"finetune_layers: unknown backbone layers {unknown}; "
                         f"choose from {BACKBONE_LAYERS} or 'all'")
    return layers


class RefineDecoder(nn.Module):
    """The CRVOS decoder. Parameter names follow the public ``REFINE`` minus its ``.conv``."""

    def __init__(self, s16_channels: int = 2048, s8_channels: int = 512, s4_channels: int = 256,
                 s16_width: int = 256, width: int = 128):
        super().__init__()
        self.conv_s16 = nn.Conv2d(s16_channels, s16_width, 1)
        self.blend_s16 = nn.Conv2d(s16_width + CLUE_CHANNELS, width, 3, padding=1)
        self.conv_s8 = nn.Conv2d(s8_channels, width, 1)
        self.blend_s8 = nn.Conv2d(width + 2, width, 3, padding=1)
        self.conv_s4 = nn.Conv2d(s4_channels, width, 1)
        self.blend_s4 = nn.Conv2d(width + 2, width, 3, padding=1)
        self.deconv1_1 = nn.ConvTranspose2d(width, 2, 4, stride=2, padding=1)
        self.deconv1_2 = nn.ConvTranspose2d(2, 2, 4, stride=2, padding=1)
        self.deconv2 = nn.ConvTranspose2d(width, 2, 4, stride=2, padding=1)
        self.deconv3 = nn.ConvTranspose2d(width, 2, 3, stride=1, padding=1)
        self.predictor = nn.ConvTranspose2d(6, 2, 6, stride=4, padding=1)
        for conv in (self.conv_s16, self.blend_s16, self.conv_s8, self.blend_s8,
                     self.conv_s4, self.blend_s4):
            # The public ConvRelu initialisation (kaiming uniform, zero bias).
            nn.init.kaiming_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)

    def project(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        """Object-independent skip projections of backbone features ``s16``, ``s8``, ``s4``."""
        return {"s16": torch.relu(self.conv_s16(feats["s16"])),
                "s8": torch.relu(self.conv_s8(feats["s8"])),
                "s4": torch.relu(self.conv_s4(feats["s4"]))}

    def forward(self, projected: dict[str, Tensor], clue: Tensor) -> Tensor:
        """``projected`` from ``project`` (batch 1 or N), ``clue`` (N, 5, H/16, W/16) -> (N, 2, H, W)."""
        n = clue.shape[0]

        def per_entry(x: Tensor) -> Tensor:
            # A frame's features are shared by all its objects: broadcast, never copy.
            return x.expand(n, -1, -1, -1) if x.shape[0] == 1 and n != 1 else x

        u = self.blend_s16(torch.cat([per_entry(projected["s16"]), clue], dim=1)).relu()
        out_16 = self.deconv1_1(u)
        u = self.blend_s8(torch.cat([per_entry(projected["s8"]), out_16], dim=1)).relu()
        out_8 = self.deconv2(u)
        u = self.blend_s4(torch.cat([per_entry(projected["s4"]), out_8], dim=1)).relu()
        out_4 = self.deconv3(u)
        return self.predictor(torch.cat([self.deconv1_2(out_16), out_8, out_4], dim=1))
