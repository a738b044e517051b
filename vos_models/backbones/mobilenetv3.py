"""MobileNetV3 (Large / Small) with torchvision's exact module and parameter names.

Built without torchvision (none exists for this CPU). The layout is torchvision's
``mobilenet_v3_large`` / ``mobilenet_v3_small`` (Howard et al., "Searching for MobileNetV3",
ICCV 2019): ``features.0`` is the stem (conv 3x3 stride 2, BN, hardswish), ``features.1`` ..
``features.15`` (Large; ``.11`` for Small) are inverted-residual blocks, the last ``features.N``
is a 1x1 conv to 6x the last block's channels; ``avgpool`` and ``classifier.{0,3}`` (two Linear
layers) follow when ``with_classifier``. A conv-BN-activation unit is a Sequential
``(0: Conv2d without bias, 1: BatchNorm2d(eps=0.001, momentum=0.01), 2: activation)`` and a block
is ``block.{i}`` of such units with an optional squeeze-excitation ``block.{i}.fc1/fc2``:

    expand (1x1, skipped when the expansion equals the input width) -> depthwise k x k (stride
    or dilation) -> [SE: x * hardsigmoid(fc2(relu(fc1(avgpool(x)))))] -> project (1x1, no act.)

with a residual connection when stride is 1 and the widths match.

``dilated=True`` trades the last stage's stride 2 for dilation 2 (torchvision's
``dilated=True``; the TTVOS public ``mobileNetV3Larges16`` / ``Smalls16``): the output stride is
16 instead of 32. With ``with_classifier=True`` and ``dilated=False`` a torchvision weight file
(``mobilenet_v3_large-8738ca79.pth``, ...) loads with ``strict=True``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from .frozen_bn import FrozenBatchNorm2d
from ._weights import load_trunk_file

#: MobileNetV3's batch-norm settings (torchvision: eps 0.001, momentum 0.01).
BN_EPS, BN_MOMENTUM = 1e-3, 0.01

#: Block tables: (input, kernel, expanded, output, squeeze-excitation, activation, stride).
#: The last three blocks form the final stage (dilated when ``dilated=True``).
BLOCKS = {
    "large": [
        (16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2), (24, 3, 72, 24, False, "RE", 1),
        (24, 5, 72, 40, True, "RE", 2), (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
        (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
        (80, 3, 184, 80, False, "HS", 1), (80, 3, 480, 112, True, "HS", 1), (112, 3, 672, 112, True, "HS", 1),
        (112, 5, 672, 160, True, "HS", 2), (160, 5, 960, 160, True, "HS", 1), (160, 5, 960, 160, True, "HS", 1),
    ],
    "small": [
        (16, 3, 16, 16, True, "RE", 2), (16, 3, 72, 24, False, "RE", 2), (24, 3, 88, 24, False, "RE", 1),
        (24, 5, 96, 40, True, "HS", 2), (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
        (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1), (48, 5, 288, 96, True, "HS", 2),
        (96, 5, 576, 96, True, "HS", 1), (96, 5, 576, 96, True, "HS", 1),
    ],
}
#: Width of the classifier's hidden layer.
LAST_CHANNEL = {"large": 1280, "small": 1024}


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never below 90% of it (torchvision)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _norm(channels: int, frozen: bool) -> nn.Module:
    return FrozenBatchNorm2d(channels, BN_EPS) if frozen else nn.BatchNorm2d(channels, BN_EPS, BN_MOMENTUM)


def conv_bn_act(in_ch: int, out_ch: int, kernel: int, *, stride: int = 1, dilation: int = 1, groups: int = 1,
                activation: type[nn.Module] | None = nn.Hardswish, frozen_bn: bool = False) -> nn.Sequential:
    """Conv2d (no bias, 'same' padding (k - 1) / 2 * dilation), batch norm, activation."""
    act = nn.Identity() if activation is None else activation(inplace=True)
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2 * dilation, dilation, groups, bias=False),
        _norm(out_ch, frozen_bn), act)


class SqueezeExcitation(nn.Module):
    """x * hardsigmoid(fc2(relu(fc1(mean_hw(x))))), squeeze width make_divisible(C / 4)."""

    def __init__(self, channels: int):
        super().__init__()
        squeezed = make_divisible(channels // 4, 8)
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.fc2(self.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        return x * nn.functional.hardsigmoid(scale)


class InvertedResidual(nn.Module):
    """One MobileNetV3 block (module docstring); (N, C_in, H, W) -> (N, C_out, H / s, W / s)."""

    def __init__(self, in_ch: int, kernel: int, expanded: int, out_ch: int, use_se: bool, activation: str,
                 stride: int, dilation: int = 1, frozen_bn: bool = False):
        super().__init__()
        act = nn.Hardswish if activation == "HS" else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != in_ch:
            layers.append(conv_bn_act(in_ch, expanded, 1, activation=act, frozen_bn=frozen_bn))
        # A dilated block keeps stride 1 (torchvision: "stride = 1 if dilation > 1").
        layers.append(conv_bn_act(expanded, expanded, kernel, stride=1 if dilation > 1 else stride,
                                  dilation=dilation, groups=expanded, activation=act, frozen_bn=frozen_bn))
        if use_se:
            layers.append(SqueezeExcitation(expanded))
        layers.append(conv_bn_act(expanded, out_ch, 1, activation=None, frozen_bn=frozen_bn))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(x)
        return y + x if self.use_residual else y


class MobileNetV3(nn.Module):
    """MobileNetV3 ``arch`` "large" or "small" (module docstring for names and options).

    ``forward`` returns the output of every ``features`` entry as a list (entry i is the output of
    ``features[i]``), so callers tap any stride; ``classify`` runs the classifier.
    """

    def __init__(self, arch: str = "large", *, dilated: bool = False, with_classifier: bool = True,
                 num_classes: int = 1000, frozen_bn: bool = False):
        super().__init__()
        if arch not in BLOCKS:
            raise ValueError(f"MobileNetV3: arch must be one of {sorted(BLOCKS)}, got {arch!r}")
        self.arch = arch
        table = BLOCKS[arch]
        layers: list[nn.Module] = [conv_bn_act(3, table[0][0], 3, stride=2, frozen_bn=frozen_bn)]
        for i, (cin, k, exp, cout, se, act, stride) in enumerate(table):
            dilation = 2 if dilated and i >= len(table) - 3 else 1
            layers.append(InvertedResidual(cin, k, exp, cout, se, act, stride, dilation, frozen_bn))
        last = 6 * table[-1][3]
        layers.append(conv_bn_act(table[-1][3], last, 1, frozen_bn=frozen_bn))
        self.features = nn.Sequential(*layers)
        self.out_channels = last
        if with_classifier:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(nn.Linear(last, LAST_CHANNEL[arch]), nn.Hardswish(inplace=True),
                                            nn.Dropout(p=0.2, inplace=True), nn.Linear(LAST_CHANNEL[arch], num_classes))
        else:
            self.avgpool = self.classifier = None
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's initialisation, so an untrained network behaves like torchvision's.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"MobileNetV3.forward: x must be (N, 3, H, W), got {tuple(x.shape)}")
        outputs = []
        for layer in self.features:
            x = layer(x)
            outputs.append(x)
        return outputs

    def classify(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) -> (N, num_classes) logits."""
        if self.classifier is None:
            raise ValueError("MobileNetV3.classify: built with with_classifier=False")
        return self.classifier(torch.flatten(self.avgpool(self.forward(x)[-1]), 1))


def mobilenet_v3_large(**kwargs) -> MobileNetV3:
    """MobileNetV3-Large; see :class:`MobileNetV3` for the options."""
    return MobileNetV3("large", **kwargs)


def mobilenet_v3_small(**kwargs) -> MobileNetV3:
    """MobileNetV3-Small; see :class:`MobileNetV3` for the options."""
    return MobileNetV3("small", **kwargs)


def load_mobilenet_weights(model: MobileNetV3, path: str | Path, *, map_location: str | torch.device = "cpu") -> list[str]:
    """Load a torchvision MobileNetV3 weight file from ``path`` into ``model``, strictly.

    The classifier's keys are dropped when the model has none (returned as the list of dropped
    keys); every other key must match in name and shape (a ValueError names those that do not).
    """
    return load_trunk_file(model, path, loader="load_mobilenet_weights",
                           kind=f"a torchvision mobilenet_v3_{model.arch} file",
                           drop=lambda k: k.split(".", 1)[0] == "classifier" and model.classifier is None,
                           map_location=map_location)
