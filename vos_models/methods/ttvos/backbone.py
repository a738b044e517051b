"""The stride-16 feature trunks of TTVOS (public ``ResNetS16``), built on vos_models' ResNet.

ResNet-18 (the public ``resnet18s16``): layer4 loses its stride (stride 1 in layer4.0.conv1 and
layer4.0.downsample.0) and only the second 3x3 conv of the later layer4 blocks is dilated 2;
features s16 = layer4 (512 ch), s8 = layer2 (128), s4 = layer1 (64).

ResNet-50 (the public ``resnet50s16``): layer4 is dropped (no keys), layer3 keeps its stride
and the 3x3 conv of layer3 blocks 4 and 5 is dilated 2; s16 = layer3 (1024), s8 = layer2
(512), s4 = layer1 (256).

MobileNetV3-Large / Small (the public ``mobileNetV3Larges16`` / ``mobileNetV3Smalls16``;
Large is the paper's Table 6 "MobileV3L"): torchvision's network with the last stage dilated
(stride 16). The public code splits ``features`` into stages by slicing, which keeps the
original indices in the state-dict keys; Large: layer0 = features[0:2], layer1 = [2:4] (s4, 24 ch),
layer2 = [4:7] (s8, 40 ch), layer3 = [7:13], layer4 = [13:17] (s16, 960 ch); Small: layer0 =
features[0], layer1 = features[1] (s4, 16 ch), layer2 = [2:4] (s8, 24), layer3 = [4:9], layer4 =
[9:13] (s16, 576). Here the network keeps torchvision's ``features.N`` names (the converter
maps the public stage names onto them) and :data:`MOBILENET_STAGES` records the split.

HRNetV2-W18-Small-v1 (the public ``hrnetv2Sv1``, the paper's main backbone):
:class:`vos_models.backbones.hrnet.HRNet` with the public names; s16 = concat(stride-16 branch,
upsampled stride-32 branch) (64 + 128 = 192 ch), s8 = the stride-8 branch (32), s4 = the
stride-4 branch (16), as the public ``get_features``. Its stages are the network's children
(``conv1`` ... ``layer1``, ``transition1..3``, ``stage2..4``); the public default trains
``stage4`` only (``finetune_layers=('stage4',)``), the "last" stage here.
"""
from __future__ import annotations

from torch import Tensor, nn

from vos_models.backbones import normalize_imagenet, resnet18, resnet50
from vos_models.backbones.hrnet import hrnetv2_w18_small_v1
from vos_models.backbones.mobilenetv3 import MobileNetV3
from vos_models.errors import VOSInputError

#: backbone name -> (s16 stage, channels of (s16, s8, s4))
BACKBONES = {
    "resnet18": ("layer4", (512, 128, 64)),
    "resnet50": ("layer3", (1024, 512, 256)),
    "mobilenetv3_large": ("layer4", (960, 40, 24)),
    "mobilenetv3_small": ("layer4", (576, 24, 16)),
    "hrnetv2_w18_small": ("stage4", (192, 32, 16)),
}

#: MobileNetV3 arch -> public stage name -> indices into ``features`` (s4 = layer1, s8 = layer2,
#: s16 = layer4, as the public ``MobileNetV3Seg``).
MOBILENET_STAGES = {
    "large": {"layer0": (0, 1), "layer1": (2, 3), "layer2": (4, 5, 6), "layer3": tuple(range(7, 13)),
              "layer4": (13, 14, 15, 16)},
    "small": {"layer0": (0,), "layer1": (1,), "layer2": (2, 3), "layer3": tuple(range(4, 9)),
              "layer4": (9, 10, 11, 12)},
}


class StrideSixteenTrunk(nn.Module):
    """ResNet / MobileNetV3 / HRNet trunk returning (s16, s8, s4) features of a normalised (N, 3, H, W) image.

    H and W must be multiples of 16; s16 is (N, C16, H/16, W/16), s8 (N, C8, H/8, W/8),
    s4 (N, C4, H/4, W/4). ``frozen_bn`` freezes every batch norm (FrozenBatchNorm2d; the
    state-dict keys are BatchNorm2d's either way).
    """

    def __init__(self, name: str = "resnet18", *, frozen_bn: bool = True):
        super().__init__()
        if name not in BACKBONES:
            raise VOSInputError(f"TTVOS backbone must be one of {sorted(BACKBONES)}, got {name!r}")
        self.name = name
        self.s16_stage, self.channels = BACKBONES[name]
        if name.startswith("mobilenetv3_"):
            self.arch = name.split("_")[1]
            self.mobilenet = MobileNetV3(self.arch, dilated=True, with_classifier=False, frozen_bn=frozen_bn)
            taps = MOBILENET_STAGES[self.arch]
            self._taps = (taps["layer4"][-1], taps["layer2"][-1], taps["layer1"][-1])
        elif name == "hrnetv2_w18_small":
            self.hrnet = hrnetv2_w18_small_v1(frozen_bn=frozen_bn)
        elif name == "resnet18":
            # output_stride 16 with "conv2" dilation reproduces ResNetS16 for BasicBlocks.
            self.resnet = resnet18(output_stride=16, basic_block_dilation="conv2", frozen_bn=frozen_bn)
        else:
            self.resnet = resnet50(num_stages=3, frozen_bn=frozen_bn)
            for block in list(self.resnet.layer3)[4:]:
                block.conv2.dilation = (2, 2)
                block.conv2.padding = (2, 2)

    @property
    def network(self) -> nn.Module:
        """The wrapped network (``resnet``, ``mobilenet`` or ``hrnet``)."""
        for attr in ("mobilenet", "hrnet"):
            if hasattr(self, attr):
                return getattr(self, attr)
        return self.resnet

    def stages(self) -> dict[str, list[nn.Module]]:
        """Stage name -> its modules, in the public code's stage names (for freezing)."""
        if hasattr(self, "mobilenet"):
            return {stage: [self.mobilenet.features[i] for i in indices]
                    for stage, indices in MOBILENET_STAGES[self.arch].items()}
        return {name: [child] for name, child in self.network.named_children()}

    def stage_of(self, parameter_name: str) -> str:
        """Public stage name of one of this module's parameter names (e.g. "layer4")."""
        parts = parameter_name.split(".")
        if parts[0] == "mobilenet":
            index = int(parts[2])  # mobilenet.features.<index>....
            return next(s for s, idx in MOBILENET_STAGES[self.arch].items() if index in idx)
        return parts[1]

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if hasattr(self, "mobilenet"):
            feats = self.mobilenet(image)
            return tuple(feats[i] for i in self._taps)
        if hasattr(self, "hrnet"):
            feats = self.hrnet(image)
            return feats["s16"], feats["s8"], feats["s4"]
        feats = self.resnet(image)
        return feats[self.s16_stage], feats["layer2"], feats["layer1"]

    @staticmethod
    def normalize(rgb: Tensor) -> Tensor:
        """(N, 3, H, W) RGB in [0, 1] -> ImageNet-normalised input (torchvision Normalize)."""
        return normalize_imagenet(rgb)
