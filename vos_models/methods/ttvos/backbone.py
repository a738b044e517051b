"""The stride-16 feature trunks of TTVOS (public ``ResNetS16``), built on vos_models' ResNet.

ResNet-18 (the public ``resnet18s16``): layer4 loses its stride (stride 1 in layer4.0.conv1 and
layer4.0.downsample.0) and only the second 3x3 conv of the later layer4 blocks is dilated 2;
features s16 = layer4 (512 ch), s8 = layer2 (128), s4 = layer1 (64).

ResNet-50 (the public ``resnet50s16``): layer4 is dropped (no keys), layer3 keeps its stride
and the 3x3 conv of layer3 blocks 4 and 5 is dilated 2; s16 = layer3 (1024), s8 = layer2
(512), s4 = layer1 (256).

The public code's HRNetV2-W18-Small-v1 and MobileNetV3 options are not built here.
"""
from __future__ import annotations

from torch import Tensor, nn

from vos_models.backbones import normalize_imagenet, resnet18, resnet50

#: backbone name -> (s16 stage, channels of (s16, s8, s4))
BACKBONES = {
    "resnet18": ("layer4", (512, 128, 64)),
    "resnet50": ("layer3", (1024, 512, 256)),
}


class StrideSixteenTrunk(nn.Module):
    """ResNet trunk returning (s16, s8, s4) features of a normalised (N, 3, H, W) image.

    H and W must be multiples of 16; s16 is (N, C16, H/16, W/16), s8 (N, C8, H/8, W/8),
    s4 (N, C4, H/4, W/4). ``frozen_bn`` freezes every batch norm (FrozenBatchNorm2d; the
    state-dict keys are BatchNorm2d's either way).
    """

    def __init__(self, name: str = "resnet18", *, frozen_bn: bool = True):
        super().__init__()
        if name not in BACKBONES:
            raise ValueError(f"TTVOS backbone must be one of {sorted(BACKBONES)}, got {name!r}")
        self.name = name
        self.s16_stage, self.channels = BACKBONES[name]
        if name == "resnet18":
            # output_stride 16 with "conv2" dilation reproduces ResNetS16 for BasicBlocks.
            self.resnet = resnet18(output_stride=16, basic_block_dilation="conv2", frozen_bn=frozen_bn)
        else:
            self.resnet = resnet50(num_stages=3, frozen_bn=frozen_bn)
            for block in list(self.resnet.layer3)[4:]:
                block.conv2.dilation = (2, 2)
                block.conv2.padding = (2, 2)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        feats = self.resnet(image)
        return feats[self.s16_stage], feats["layer2"], feats["layer1"]

    @staticmethod
    def normalize(rgb: Tensor) -> Tensor:
        """(N, 3, H, W) RGB in [0, 1] -> ImageNet-normalised input (torchvision Normalize)."""
        return normalize_imagenet(rgb)
