"""CRVOS encoder: a torchvision-layout ResNet at output stride 16 (paper §2.1).

The public ``ResNetS16`` (CV-IP/CRVOS ``models/backbones/resnet.py``) is a torchvision v1.5
ResNet whose layer4 keeps stride 1: block 0 has conv2 and downsample strides 1, blocks 1.. use
dilation 2 (padding 2) in conv2. That is torchvision's ``replace_stride_with_dilation=(False,
False, True)``, i.e. the shared trunk with ``output_stride=16``.

Features used by the decoder: ``s4`` = layer1 output (1/4), ``s8`` = layer2 output (1/8),
``s16`` = layer4 output (1/16). layer3 only feeds layer4; the stem output is not used. The
ImageNet classifier ``fc`` of the public state dict is never used, so the trunk has none.

The public model freezes every backbone layer except ``finetune_layers`` (default layer4):
frozen layers get ``requires_grad=False`` and keep their BatchNorm in eval mode even when the
model trains (``CRVOS.train``). ``finetune_layers="all"`` trains the whole trunk.
"""
from __future__ import annotations

from torch import Tensor

from vos_models.backbones.resnet import ResNet

BACKBONES = ("resnet50", "resnet18")
BACKBONE_LAYERS = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")


def build_encoder(name: str) -> ResNet:
    """An output-stride-16 ResNet with torchvision parameter names (randomly initialised)."""
    if name not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {name!r}")
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
        raise ValueError(f"finetune_layers: unknown backbone layers {unknown}; "
                         f"choose from {BACKBONE_LAYERS} or 'all'")
    return layers
