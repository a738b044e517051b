"""HRNetV2-W18-Small-v1 (Wang et al., "Deep High-Resolution Representation Learning", TPAMI 2020)
with the public HRNet-Semantic-Segmentation state-dict names, built without torchvision.

This is the TTVOS paper's main backbone (public ``hrnetv2Sv1``, config
``seg_hrnet_w18_small_v1.yaml``). Layout (module names = state-dict prefixes):

- stem: ``conv1`` (3x3, 3->64, stride 2), ``bn1``, ReLU, ``conv2`` (3x3, 64->64, stride 2),
  ``bn2``, ReLU -> stride 4;
- ``layer1``: one Bottleneck (64 -> 32 -> 128, with ``downsample``);
- ``transition1/2/3``: ``transition<k>.<i>`` is None when branch i keeps its width, a
  ``Sequential(conv3x3, BN, ReLU)`` when it changes width at the same stride, or (a new branch)
  ``Sequential(Sequential(conv3x3 stride 2, BN, ReLU))`` fed from the lowest-resolution branch;
- ``stage2/3/4``: one HighResolutionModule each (``stage<k>.0``) with 2/3/4 branches of
  2 BasicBlocks, widths (16, 32, 64, 128) at strides (4, 8, 16, 32); ``branches.<i>.<b>`` are the
  blocks and ``fuse_layers.<i>.<j>`` turns branch j into branch i: j > i: 1x1 conv + BN, then
  bilinear upsampling (align_corners=False) to branch i's size; j < i: i - j stride-2 3x3 conv +
  BN units (ReLU after all but the last; the intermediate ones keep branch j's width). Each output
  is ReLU(sum).

Every batch norm has momentum 0.01 (the public ``BN_MOMENTUM``). ``forward`` returns the public
``get_features`` dict: ``s16`` = concat(stride-16 branch, stride-32 branch upsampled bilinearly
to it) (64 + 128 = 192 channels), ``s8`` (32 channels), ``s4`` (16 channels). Inputs whose sides
are multiples of 16 give exact strides 4/8/16 (the stride-32 branch is ceil(H/32)).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .frozen_bn import FrozenBatchNorm2d
from ._weights import load_trunk_file

BN_MOMENTUM = 0.01

#: HRNetV2-W18-Small-v1 (seg_hrnet_w18_small_v1.yaml): stage -> (blocks per branch, branch widths);
#: one module per stage, BASIC blocks in stages 2-4, stage 1 is one BOTTLENECK of width 32.
W18_SMALL_V1 = {
    "stage1": ((1,), (32,)),
    "stage2": ((2, 2), (16, 32)),
    "stage3": ((2, 2, 2), (16, 32, 64)),
    "stage4": ((2, 2, 2, 2), (16, 32, 64, 128)),
}

#: Keys of the ImageNet classification HRNet files that the segmentation trunk has no use for.
CLASSIFIER_PREFIXES = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.", "last_layer.")


def _bn(channels: int, frozen: bool) -> nn.Module:
    return FrozenBatchNorm2d(channels) if frozen else nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, frozen: bool, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(cin, width), _bn(width, frozen)
        self.conv2, self.bn2 = _conv3x3(width, width), _bn(width, frozen)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, frozen: bool, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), _bn(width, frozen)
        self.conv2, self.bn2 = _conv3x3(width, width), _bn(width, frozen)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = _bn(width * 4, frozen)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


def _blocks(block: type, cin: int, width: int, count: int, frozen: bool) -> nn.Sequential:
    """``count`` blocks; the first gets a 1x1 conv + BN ``downsample`` when the width changes."""
    cout = width * block.expansion
    down = None if cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), _bn(cout, frozen))
    layers = [block(cin, width, frozen, down)] + [block(cout, width, frozen) for _ in range(count - 1)]
    return nn.Sequential(*layers)


def _down_unit(cin: int, cout: int, frozen: bool, relu: bool) -> nn.Sequential:
    layers = [_conv3x3(cin, cout, 2), _bn(cout, frozen)]
    return nn.Sequential(*(layers + [nn.ReLU()] if relu else layers))


class HighResolutionModule(nn.Module):
    """Parallel branches of BasicBlocks, then every branch fused into every output resolution."""

    def __init__(self, num_blocks: tuple[int, ...], widths: tuple[int, ...], frozen: bool):
        super().__init__()
        n = len(widths)
        self.branches = nn.ModuleList(_blocks(BasicBlock, w, w, b, frozen) for b, w in zip(num_blocks, widths))
        fuse = []
        for i in range(n):
            row = []
            for j in range(n):
                if j > i:
                    row.append(nn.Sequential(nn.Conv2d(widths[j], widths[i], 1, bias=False), _bn(widths[i], frozen)))
                elif j == i:
                    row.append(None)
                else:
                    units = [_down_unit(widths[j], widths[j], frozen, True) for _ in range(i - j - 1)]
                    units.append(_down_unit(widths[j], widths[i], frozen, False))
                    row.append(nn.Sequential(*units))
            fuse.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(fuse) if n > 1 else None

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        if self.fuse_layers is None:
            return xs
        out = []
        for i, row in enumerate(self.fuse_layers):
            y = xs[i]
            for j, layer in enumerate(row):
                if j < i:
                    y = y + layer(xs[j])
                elif j > i:
                    y = y + F.interpolate(layer(xs[j]), size=xs[i].shape[-2:], mode="bilinear", align_corners=False)
            out.append(F.relu(y))
        return out


class HRNet(nn.Module):
    """HRNetV2 segmentation trunk; ``forward`` gives {"s16", "s8", "s4"} (see module docstring).

    ``frozen_bn`` uses FrozenBatchNorm2d everywhere (same state-dict keys as BatchNorm2d).
    """

    def __init__(self, config: dict = W18_SMALL_V1, *, frozen_bn: bool = False):
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(3, 64, 2), _bn(64, frozen_bn)
        self.conv2, self.bn2 = _conv3x3(64, 64, 2), _bn(64, frozen_bn)
        (count,), (width,) = config["stage1"]
        self.layer1 = _blocks(Bottleneck, 64, width, count, frozen_bn)
        previous = [width * Bottleneck.expansion]
        for k in (2, 3, 4):
            num_blocks, widths = config[f"stage{k}"]
            setattr(self, f"transition{k - 1}", self._transition(previous, list(widths), frozen_bn))
            setattr(self, f"stage{k}", nn.Sequential(HighResolutionModule(num_blocks, widths, frozen_bn)))
            previous = list(widths)
        self.widths = tuple(previous)
        #: channels of (s16, s8, s4) as the public ``get_feature_count``.
        self.feature_channels = (self.widths[2] + self.widths[3], self.widths[1], self.widths[0])

    @staticmethod
    def _transition(before: list[int], after: list[int], frozen: bool) -> nn.ModuleList:
        layers = []
        for i, cout in enumerate(after):
            if i < len(before):
                layers.append(None if before[i] == cout else nn.Sequential(
                    _conv3x3(before[i], cout), _bn(cout, frozen), nn.ReLU()))
            else:  # a new branch, from the lowest-resolution one
                extra = i + 1 - len(before)
                layers.append(nn.Sequential(*[
                    _down_unit(before[-1], cout if n == extra - 1 else before[-1], frozen, True)
                    for n in range(extra)]))
        return nn.ModuleList(layers)

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        x = F.relu(self.bn1(self.conv1(image)))
        x = F.relu(self.bn2(self.conv2(x)))
        ys = [self.layer1(x)]
        for k in (2, 3, 4):
            transition = getattr(self, f"transition{k - 1}")
            xs = []
            for i, layer in enumerate(transition):
                source = ys[min(i, len(ys) - 1)]
                xs.append(source if layer is None else layer(source))
            ys = getattr(self, f"stage{k}")(xs)
        s4, s8, s16, s32 = ys
        s32 = F.interpolate(s32, size=s16.shape[-2:], mode="bilinear", align_corners=False)
        return {"s16": torch.cat([s16, s32], dim=1), "s8": s8, "s4": s4}


def hrnetv2_w18_small_v1(*, frozen_bn: bool = False) -> HRNet:
    """HRNetV2-W18-Small-v1 (the public ``hrnetv2Sv1``)."""
    return HRNet(W18_SMALL_V1, frozen_bn=frozen_bn)


def load_hrnet_weights(model: HRNet, path: str | Path, *, map_location: str | torch.device = "cpu") -> list[str]:
    """Load an HRNet weight file (e.g. the ImageNet ``hrnet_w18_small_model_v1.pth``) strictly.

    Keys of the classification / segmentation heads (:data:`CLASSIFIER_PREFIXES`) are dropped and
    returned; every other key must match ours in name and shape (a ValueError names those that
    do not).
    """
    return load_trunk_file(model, path, loader="load_hrnet_weights", kind="an HRNet file",
                           drop=lambda k: k.startswith(CLASSIFIER_PREFIXES), map_location=map_location)
