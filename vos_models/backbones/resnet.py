"""ResNet-18 / ResNet-50 trunks with torchvision's exact module and parameter names.

A torchvision weight file on disk (``resnet18-f37072fd.pth``, ``resnet50-0676ba61.pth``, ...)
loads unchanged with ``model.load_state_dict(torch.load(path), strict=True)`` when the model is
built with the defaults (``num_stages=4``, ``with_fc=True``, no extra stem channels). Weights
never come from the network: :func:`load_backbone_weights` reads a path the user gives.

Names (as torchvision): ``conv1``, ``bn1``, ``layer1`` .. ``layer4`` made of blocks with
``conv1/bn1/conv2/bn2`` (BasicBlock) or ``conv1/bn1/conv2/bn2/conv3/bn3`` (Bottleneck, v1.5:
the stride sits on the 3x3 ``conv2``), ``downsample.0`` (1x1 conv) and ``downsample.1`` (norm),
and an optional ``fc``.

Options the VOS methods need:

- ``output_stride`` 32 / 16 / 8: later stages trade stride for dilation exactly as torchvision's
  ``replace_stride_with_dilation`` (the first block of a dilated stage keeps the previous
  dilation, the following blocks use the new one; the downsample conv gets stride 1).
  torchvision refuses dilation in BasicBlock; here ``basic_block_dilation`` says where it goes:
  ``"both"`` (both 3x3 convs, DeepLab style) or ``"conv2"`` (only the second 3x3 conv, as
  TTVOS's ResNet-18 ``ResNetS16`` does).
- ``frozen_bn``: FrozenBatchNorm2d everywhere (same state-dict keys as BatchNorm2d).
- ``conv_bias``: every conv gets a bias (STCN/PCVOS's value-encoder ResNet-18 does this).
- Extra stem input channels (e.g. a mask), two layouts:

  * ``extra_stem="concat"``: ``conv1`` itself takes ``3 + extra_in_channels`` channels, in the
    order [RGB, extra...] (STCN/PCVOS value encoder). A torchvision 3-channel ``conv1.weight``
    is widened with zeros for the extra channels by :func:`load_backbone_weights`, so the
    pretrained response to RGB is unchanged at initialisation.
  * ``extra_stem="separate"``: a second stem conv ``conv1_extra`` (7x7, stride 2, padding 3,
    bias ``extra_stem_bias``) reads the extra channels and its output is added to ``conv1(rgb)``
    before ``bn1`` (RGMP's ``conv1_p``, STM's ``conv1_m``). ``conv1`` keeps torchvision's shape.

  Call ``forward(rgb, extra)`` with ``extra`` of shape (N, extra_in_channels, H, W).

The input is the normalised image (normalisation is each method's job; ImageNet statistics are
``IMAGENET_MEAN`` / ``IMAGENET_STD``). :meth:`ResNet.forward` returns every stage's features.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from ._weights import read_weights_file
from ..errors import CheckpointError, VOSInputError
from .frozen_bn import FrozenBatchNorm2d

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

NormFactory = Callable[[int], nn.Module]


def normalize_imagenet(rgb: Tensor) -> Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> (x - mean) / std with the ImageNet statistics."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb - mean) / std


def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=bias)


def _conv1x1(cin: int, cout: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=bias)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual: relu(bn2(conv2(relu(bn1(conv1(x))))) + skip(x))."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 dilation: int = 1, norm: NormFactory = nn.BatchNorm2d, conv_bias: bool = False,
                 dilation_where: str = "both"):
        super().__init__()
        first_dilation = dilation if dilation_where == "both" else 1
        self.conv1 = _conv3x3(inplanes, planes, stride, first_dilation, conv_bias)
        self.bn1 = norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, 1, dilation, conv_bias)
        self.bn2 = norm(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision v1.5 bottleneck: 1x1 -> 3x3 (stride, dilation) -> 1x1 (x4 channels) + skip."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 dilation: int = 1, norm: NormFactory = nn.BatchNorm2d, conv_bias: bool = False,
                 dilation_where: str = "both"):
        super().__init__()
        del dilation_where  # a bottleneck has one 3x3 conv: the dilation always goes there
        self.conv1 = _conv1x1(inplanes, planes, bias=conv_bias)
        self.bn1 = norm(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation, conv_bias)
        self.bn2 = norm(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion, bias=conv_bias)
        self.bn3 = norm(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_ARCHS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}

# Which of layer2..layer4 trade their stride for dilation, per output stride (torchvision's
# replace_stride_with_dilation).
_DILATE_FOR_STRIDE = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}

#: Stride of each returned feature (before dilation changes the deep ones).
STAGE_NAMES = ("stem", "layer1", "layer2", "layer3", "layer4")


class ResNet(nn.Module):
    """ResNet trunk. ``forward(x[, extra])`` -> OrderedDict of features:

    - ``"stem"``: relu(bn1(conv1(x))), (N, 64, H/2, W/2)
    - ``"layer1"``: (N, 64*e, H/4, W/4)        (e = 1 for ResNet-18, 4 for ResNet-50)
    - ``"layer2"``: (N, 128*e, H/8, W/8)
    - ``"layer3"``: (N, 256*e, H/16, W/16)    (H/8 with output_stride 8)
    - ``"layer4"``: (N, 512*e, H/32, W/32)    (H/16 or H/8 with output_stride 16 or 8)
    - ``"fc"``: (N, num_classes) logits, only when ``with_fc`` and ``return_logits=True``.

    Only the first ``num_stages`` layers are built (methods that stop at layer3 skip layer4;
    their state dict then has no layer4 keys).
    """

    def __init__(self, arch: str = "resnet50", *, output_stride: int = 32, frozen_bn: bool = False,
                 num_stages: int = 4, with_fc: bool = False, num_classes: int = 1000,
                 extra_in_channels: int = 0, extra_stem: str = "separate", extra_stem_bias: bool = True,
                 conv_bias: bool = False, basic_block_dilation: str = "both", bn_eps: float = 1e-5):
        super().__init__()
        if arch not in _ARCHS:
            raise VOSInputError(f"ResNet: arch must be one of {sorted(_ARCHS)}, got {arch!r}")
        if output_stride not in _DILATE_FOR_STRIDE:
            raise ValueError(f"ResNet: output_stride must be 32, 16 or 8, got {output_stride!r}")
        if not 1 <= num_stages <= 4:
            raise ValueError(f"ResNet: num_stages must be in 1..4, got {num_stages!r}")
        if with_fc and num_stages != 4:
            raise ValueError("ResNet: with_fc needs num_stages=4 (fc reads layer4)")
        if extra_in_channels < 0:
            raise ValueError(f"ResNet: extra_in_channels must be >= 0, got {extra_in_channels!r}")
        if extra_stem not in ("separate", "concat"):
            raise ValueError(f"ResNet: extra_stem must be 'separate' or 'concat', got {extra_stem!r}")
        if basic_block_dilation not in ("both", "conv2"):
            raise ValueError("ResNet: basic_block_dilation must be 'both' or 'conv2', "
                             f"got {basic_block_dilation!r}")
        block, layers = _ARCHS[arch]
        self.arch = arch
        self.output_stride = output_stride
        self.num_stages = num_stages
        self.extra_in_channels = extra_in_channels
        self.extra_stem = extra_stem
        self.frozen_bn = frozen_bn
        if frozen_bn:
            def norm(c: int) -> nn.Module:
                return FrozenBatchNorm2d(c, eps=bn_eps)
        else:
            def norm(c: int) -> nn.Module:
                return nn.BatchNorm2d(c, eps=bn_eps)
        self._norm = norm
        self._conv_bias = conv_bias
        self._dilation_where = basic_block_dilation

        stem_in = 3 + (extra_in_channels if extra_stem == "concat" else 0)
        self.conv1 = nn.Conv2d(stem_in, 64, 7, stride=2, padding=3, bias=conv_bias)
        if extra_in_channels and extra_stem == "separate":
            self.conv1_extra = nn.Conv2d(extra_in_channels, 64, 7, stride=2, padding=3, bias=extra_stem_bias)
        else:
            self.conv1_extra = None
        self.bn1 = norm(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)

        self._inplanes = 64
        self._dilation = 1
        dilate = (False,) + _DILATE_FOR_STRIDE[output_stride]
        for i in range(num_stages):
            planes = 64 * 2 ** i
            stride = 1 if i == 0 else 2
            self.add_module(f"layer{i + 1}", self._make_layer(block, planes, layers[i], stride, dilate[i]))
        self.feature_channels = {"stem": 64, **{f"layer{i + 1}": 64 * 2 ** i * block.expansion
                                               for i in range(num_stages)}}
        if with_fc:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512 * block.expansion, num_classes)
        else:
            self.avgpool = None
            self.fc = None
        self._init_weights()

    def _make_layer(self, block, planes: int, blocks: int, stride: int, dilate: bool) -> nn.Sequential:
        previous_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self._inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self._inplanes, planes * block.expansion, stride, bias=self._conv_bias),
                self._norm(planes * block.expansion))
        common = dict(norm=self._norm, conv_bias=self._conv_bias, dilation_where=self._dilation_where)
        layers = [block(self._inplanes, planes, stride, downsample, dilation=previous_dilation, **common)]
        self._inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self._inplanes, planes, dilation=self._dilation, **common))
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        # torchvision's initialisation, so an untrained trunk behaves like torchvision's.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.conv1_extra is not None:
            # Start the extra stem at zero so a pretrained RGB trunk is unchanged at first.
            nn.init.zeros_(self.conv1_extra.weight)

    def stem(self, x: Tensor, extra: Tensor | None = None) -> Tensor:
        """relu(bn1(conv1(x) [+ conv1_extra(extra)])): (N, 64, H/2, W/2)."""
        if self.extra_in_channels:
            if extra is None:
                raise ValueError(f"ResNet.forward: this trunk takes {self.extra_in_channels} extra input "
                                 "channel(s); pass them as `extra` (N, C_extra, H, W)")
            if extra.shape[1] != self.extra_in_channels or extra.shape[-2:] != x.shape[-2:]:
                raise ValueError(f"ResNet.forward: extra must be (N, {self.extra_in_channels}, "
                                 f"{x.shape[-2]}, {x.shape[-1]}), got {tuple(extra.shape)}")
            if self.extra_stem == "concat":
                y = self.conv1(torch.cat([x, extra.to(x.dtype)], dim=1))
            else:
                y = self.conv1(x) + self.conv1_extra(extra.to(x.dtype))
        else:
            if extra is not None:
                raise ValueError("ResNet.forward: got `extra` but the trunk was built with extra_in_channels=0")
            y = self.conv1(x)
        return self.relu(self.bn1(y))

    def forward(self, x: Tensor, extra: Tensor | None = None, *, return_logits: bool = False) -> "OrderedDict[str, Tensor]":
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"ResNet.forward: x must be (N, 3, H, W), got {tuple(x.shape)}")
        features: OrderedDict[str, Tensor] = OrderedDict()
        y = self.stem(x, extra)
        features["stem"] = y
        y = self.maxpool(y)
        for i in range(self.num_stages):
            y = getattr(self, f"layer{i + 1}")(y)
            features[f"layer{i + 1}"] = y
        if return_logits:
            if self.fc is None:
                raise ValueError("ResNet.forward: return_logits needs with_fc=True")
            features["fc"] = self.fc(torch.flatten(self.avgpool(y), 1))
        return features


def resnet18(**kwargs) -> ResNet:
    """ResNet-18 (BasicBlock [2, 2, 2, 2]); see :class:`ResNet` for the options."""
    return ResNet("resnet18", **kwargs)


def resnet50(**kwargs) -> ResNet:
    """ResNet-50 (Bottleneck [3, 4, 6, 3]); see :class:`ResNet` for the options."""
    return ResNet("resnet50", **kwargs)


def load_backbone_weights(model: ResNet, path: str | Path, *, map_location: str | torch.device = "cpu") -> dict:
    """Load a torchvision ResNet weight file from ``path`` into ``model``, strictly.

    The file may be a plain state dict or a dict holding one under ``"state_dict"``/``"model"``.
    Keys of parts the model deliberately lacks (``fc`` when built without it, layers past
    ``num_stages``) are dropped; every other key must match in name and shape. With
    ``extra_stem="concat"`` a 3-channel ``conv1.weight`` is widened with zero weights for the
    extra channels. The separate extra stem (``conv1_extra``) keeps its initialisation.

    Returns a report ``{"dropped": [...], "widened": [...], "kept_init": [...]}``.
    Raises FileNotFoundError or ValueError naming the offending keys.
    """
    path = Path(path)
    state = read_weights_file(path, "load_backbone_weights: weight file", map_location)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise CheckpointError(f"load_backbone_weights: {path} does not hold a state dict")
    state = dict(state)
    dropped = []
    for key in list(state):
        head = key.split(".", 1)[0]
        if (head == "fc" and model.fc is None) or (head.startswith("layer") and head[5:].isdigit()
                                                   and int(head[5:]) > model.num_stages):
            dropped.append(key)
            del state[key]
    widened = []
    own = model.state_dict()
    w = state.get("conv1.weight")
    if (w is not None and model.extra_stem == "concat" and model.extra_in_channels
            and w.shape[1] == 3 and own["conv1.weight"].shape[1] == 3 + model.extra_in_channels):
        pad = w.new_zeros(w.shape[0], model.extra_in_channels, *w.shape[2:])
        state["conv1.weight"] = torch.cat([w, pad], dim=1)
        widened.append("conv1.weight")
    kept_init = [k for k in own if k.startswith("conv1_extra.") and k not in state]
    for k in kept_init:
        state[k] = own[k]
    if model._conv_bias:
        # torchvision convs have no bias: a biased trunk keeps its zero-initialised biases.
        for k in own:
            if k.endswith(".bias") and k not in state and not k.startswith("fc."):
                state[k] = own[k]
                kept_init.append(k)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshaped = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        if misshaped:
            parts.append("misshaped " + ", ".join(f"{k}: file {tuple(state[k].shape)} vs model "
                                                  f"{tuple(own[k].shape)}" for k in misshaped[:8]))
        raise CheckpointError(f"load_backbone_weights: {path} does not fit {model.arch}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    return {"dropped": dropped, "widened": widened, "kept_init": kept_init}
