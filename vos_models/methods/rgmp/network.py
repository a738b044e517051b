"""RGMP network: Siamese two-stream encoder, global convolution block, refinement decoder.

Oh et al., "Fast Video Object Segmentation by Reference-Guided Mask Propagation", CVPR 2018,
section 3.1 and Fig. 2, with the layer shapes of the public implementation
(seoungwugoh/RGMP, ``model.py``), so that its checkpoints load through ``convert.py``.

Shapes for an input of H x W (both multiples of 32) with the paper's ResNet-50:

    encoder(frame (B,3,H,W), mask (B,1,H,W)) ->
        r5 (B,2048,H/32,W/32), r4 (B,1024,H/16,W/16), r3 (B,512,H/8,W/8), r2 (B,256,H/4,W/4)
    decoder(r5 target, r5 reference, r4, r3, r2) -> logits (B,2,H,W)
        (channel 1 = object; the probability is softmax(logits, dim=1)[:, 1])

The encoder is shared by the reference stream (reference frame + its ground-truth mask) and the
target stream (current frame + guidance mask, the previous frame's soft output). The mask is a
fourth input channel: its own 7x7 stride-2 filters (``backbone.conv1_extra``) are added to the RGB stem's
output before the first batch norm, which is the same as one 4-channel convolution.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vos_models.backbones.resnet import IMAGENET_MEAN, IMAGENET_STD, ResNet
from vos_models.errors import VOSInputError

BACKBONES = ("resnet50", "resnet18")


def _upsample_bilinear_corners(x: Tensor, factor: int) -> Tensor:
    """Bilinear upsampling by an integer factor with align_corners=True.

    The public code calls ``F.upsample(mode='bilinear')`` without align_corners; under PyTorch
    0.3.1, the version it was written for, that meant align_corners=True (the default changed in
    0.4.0). The parity fixture was produced that way and differs by up to 0.58 otherwise.
    """
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=True)


class RGMPEncoder(nn.Module):
    """Two-stream (shared) encoder: ResNet trunk with the mask as a fourth input channel.

    The trunk is ``vos_models.backbones.ResNet`` with a separate, biased mask stem
    (``backbone.conv1_extra``, the public ``conv1_p``) and frozen batch norms (the public code
    freezes them; RGMP trains with a handful of samples per batch). ``mean`` and ``std`` are
    buffers (1,3,1,1) in the state dict, as in the public code: a converted checkpoint brings
    its own normalisation constants.
    """

    def __init__(self, backbone: str = "resnet50", frozen_bn: bool = True):
        super().__init__()
        if backbone not in BACKBONES:
            raise VOSInputError(f"RGMPEncoder: backbone must be one of {BACKBONES}, got {backbone!r}")
        self.backbone = ResNet(backbone, frozen_bn=frozen_bn, extra_in_channels=1,
                               extra_stem="separate", extra_stem_bias=True)
        # The paper initialises the added mask filters randomly (the trunk zero-initialises
        # them so that an ImageNet trunk starts unchanged); use torchvision's conv init.
        nn.init.kaiming_normal_(self.backbone.conv1_extra.weight, mode="fan_out", nonlinearity="relu")
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    @property
    def channels(self) -> tuple[int, int, int, int]:
        """Output channels of (r5, r4, r3, r2)."""
        c = self.backbone.feature_channels
        return c["layer4"], c["layer3"], c["layer2"], c["layer1"]

    def rgb_stem(self, frame: Tensor) -> Tensor:
        """conv1 of the normalised frame: (B,3,H,W) in [0,1] -> (B,64,H/2,W/2)."""
        return self.backbone.conv1((frame - self.mean) / self.std)

    def forward(self, frame: Tensor | None, mask: Tensor, rgb_stem: Tensor | None = None
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """frame (B,3,H,W) in [0,1] and mask (B,1,H,W) -> (r5, r4, r3, r2).

        Pass ``rgb_stem`` (from :meth:`rgb_stem`, batch 1 or B) instead of ``frame`` to encode
        one frame with several masks without repeating the RGB convolution; it broadcasts.
        """
        if rgb_stem is None:
            if frame is None:
                raise ValueError("RGMPEncoder: give either frame or rgb_stem")
            rgb_stem = self.rgb_stem(frame)
        net = self.backbone
        x = rgb_stem + net.conv1_extra(mask.to(rgb_stem.dtype))
        x = net.maxpool(net.relu(net.bn1(x)))
        r2 = net.layer1(x)
        r3 = net.layer2(r2)
        r4 = net.layer3(r3)
        r5 = net.layer4(r4)
        return r5, r4, r3, r2


class GlobalConvolution(nn.Module):
    """Global convolution block [Peng et al. 2017] without batch norm:
    (k x 1 then 1 x k) + (1 x k then k x 1), no nonlinearity, k = 7."""

    def __init__(self, in_channels: int, channels: int, kernel: int = 7):
        super().__init__()
        pad = kernel // 2
        self.conv_l1 = nn.Conv2d(in_channels, channels, (kernel, 1), padding=(pad, 0))
        self.conv_l2 = nn.Conv2d(channels, channels, (1, kernel), padding=(0, pad))
        self.conv_r1 = nn.Conv2d(in_channels, channels, (1, kernel), padding=(0, pad))
        self.conv_r2 = nn.Conv2d(channels, channels, (kernel, 1), padding=(pad, 0))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_l2(self.conv_l1(x)) + self.conv_r2(self.conv_r1(x))


class ResidualConvs(nn.Module):
    """x + conv2(relu(conv1(relu(x)))), 3x3 convolutions, channel count kept."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class RefinementModule(nn.Module):
    """Refinement module [Pinheiro et al. 2016] with residual blocks (paper Fig. 2).

    skip features f (B,Cin,h,w) and coarser decoder features pm (B,C,h/2,w/2):
        s = residual(skip_conv(f));  m = residual(s + upsample_x2(pm))  -> (B,C,h,w)
    """

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.skip_conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.skip_residual = ResidualConvs(channels)
        self.merge_residual = ResidualConvs(channels)

    def forward(self, skip: Tensor, coarse: Tensor) -> Tensor:
        s = self.skip_residual(self.skip_conv(skip))
        return self.merge_residual(s + _upsample_bilinear_corners(coarse, 2))


class RGMPDecoder(nn.Module):
    """Global convolution block + three refinement modules + 2-channel prediction at 1/4 scale,
    upsampled x4 (align_corners=True) to the input resolution."""

    def __init__(self, encoder_channels: tuple[int, int, int, int], channels: int = 256):
        super().__init__()
        c5, c4, c3, c2 = encoder_channels
        self.global_conv = GlobalConvolution(2 * c5, channels)
        self.global_residual = ResidualConvs(channels)
        self.refine4 = RefinementModule(c4, channels)
        self.refine3 = RefinementModule(c3, channels)
        self.refine2 = RefinementModule(c2, channels)
        self.predict = nn.Conv2d(channels, 2, 3, padding=1)

    def forward(self, r5: Tensor, ref_r5: Tensor, r4: Tensor, r3: Tensor, r2: Tensor) -> Tensor:
        """Target features (r5, r4, r3, r2) and reference r5 (B,C5,h,w) -> logits (B,2,H,W).

        ``ref_r5`` may have batch 1 and broadcast over the target batch."""
        if ref_r5.shape[0] != r5.shape[0]:
            ref_r5 = ref_r5.expand(r5.shape[0], -1, -1, -1)
        m5 = self.global_residual(self.global_conv(torch.cat([r5, ref_r5], dim=1)))
        m4 = self.refine4(r4, m5)
        m3 = self.refine3(r3, m4)
        m2 = self.refine2(r2, m3)
        return _upsample_bilinear_corners(self.predict(F.relu(m2)), 4)


class RGMPNetwork(nn.Module):
    """Encoder + decoder. ``backbone="resnet50"`` and ``decoder_channels=256`` are the paper's;
    smaller settings (e.g. resnet18 / 64) are for quick CPU experiments only."""

    def __init__(self, backbone: str = "resnet50", decoder_channels: int = 256,
                 frozen_bn: bool = True):
        super().__init__()
        self.encoder = RGMPEncoder(backbone, frozen_bn)
        self.decoder = RGMPDecoder(self.encoder.channels, decoder_channels)

    def forward(self, frame: Tensor, guidance: Tensor, ref_frame: Tensor, ref_mask: Tensor
                ) -> Tensor:
        """One propagation step: target frame (B,3,H,W) with guidance mask (B,1,H,W), reference
        frame (B,3,H,W) with its mask (B,1,H,W) -> logits (B,2,H,W)."""
        ref_r5 = self.encoder(ref_frame, ref_mask)[0]
        r5, r4, r3, r2 = self.encoder(frame, guidance)
        return self.decoder(r5, ref_r5, r4, r3, r2)
