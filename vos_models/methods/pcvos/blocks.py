"""Convolutional building blocks of PCVOS (shared with STCN).

Parameter names follow the public PCVOS code (`model/modules.py`, `model/cbam.py`) so that a
public state dict loads without renaming: `ResBlock.{downsample,conv1,conv2}`,
`CBAM.{ChannelGate.mlp.{1,3}, SpatialGate.spatial.conv}`, `UpsampleBlock.{skip_conv,out_conv}`.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ResBlock(nn.Module):
    """Pre-activation residual block: `skip(x) + conv2(relu(conv1(relu(x))))`.

    Both convs are 3x3 with bias; `skip` is a 3x3 conv ("downsample") when the widths differ
    and the identity otherwise. (N, in_dim, H, W) -> (N, out_dim, H, W).
    """

    def __init__(self, in_dim: int, out_dim: int | None = None):
        super().__init__()
        out_dim = in_dim if out_dim is None else out_dim
        self.downsample = None if in_dim == out_dim else nn.Conv2d(in_dim, out_dim, 3, padding=1)
        self.conv1 = nn.Conv2d(in_dim, out_dim, 3, padding=1)
        self.conv2 = nn.Conv2d(out_dim, out_dim, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        r = self.conv2(F.relu(self.conv1(F.relu(x))))
        skip = x if self.downsample is None else self.downsample(x)
        return skip + r

    def shared_part(self, shared: Tensor) -> tuple[Tensor, Tensor]:
        """The contributions of the trailing input channels `shared` (n, Cs, H, W), with the
        biases, to `downsample(x)` and `conv1(relu(x))` for x = cat([own, shared], 1).

        A convolution is linear in its input channels, and relu acts per channel, so
        ``conv(cat[own, shared]) = conv_own(own) + conv_shared(shared)`` with the weight split
        along its input channels. When `shared` is the same for k inputs (PCVOS: the query
        features of a frame, common to all its objects), its part is computed once instead of k
        times: see :meth:`forward_shared`.
        """
        cs = shared.shape[1]
        if self.downsample is None:  # identity skip (in_dim == out_dim): shared's channels, zeros before them
            own_channels = self.conv1.in_channels - cs
            skip = torch.cat([shared.new_zeros(shared.shape[0], own_channels, *shared.shape[2:]), shared], 1)
        else:
            skip = F.conv2d(shared, self.downsample.weight[:, -cs:], self.downsample.bias, padding=1)
        pre = F.conv2d(F.relu(shared), self.conv1.weight[:, -cs:], self.conv1.bias, padding=1)
        return skip, pre

    def forward_shared(self, own: Tensor, shared_part: tuple[Tensor, Tensor], frames_first: bool) -> Tensor:
        """`forward(cat([own, shared], 1))` from `shared_part(shared)`, own (k * n, Co, H, W).

        The inputs are grouped as (n, k) (`frames_first`: frame-major) or (k, n) (object-major)
        against the n frames of `shared`. Equal to `forward` up to float rounding (each
        convolution's sum over input channels is split in two).
        """
        skip, pre = shared_part
        co = own.shape[1]
        if self.downsample is None:  # identity skip: own's channels, zeros after them
            own_skip = torch.cat([own, own.new_zeros(own.shape[0], self.conv1.in_channels - co, *own.shape[2:])], 1)
        else:
            own_skip = F.conv2d(own, self.downsample.weight[:, :co], None, padding=1)
        own_pre = F.conv2d(F.relu(own), self.conv1.weight[:, :co], None, padding=1)
        r = self.conv2(F.relu(add_per_frame(own_pre, pre, frames_first)))
        return add_per_frame(own_skip, skip, frames_first) + r


def add_per_frame(per_input: Tensor, per_frame: Tensor, frames_first: bool) -> Tensor:
    """per_input (k * n, ...) + per_frame (n, ...), broadcast over the k inputs of each frame,
    grouped (n, k) if `frames_first` else (k, n)."""
    n = per_frame.shape[0]
    if per_input.shape[0] % n:
        raise ValueError(f"add_per_frame: {per_input.shape[0]} inputs are not a multiple of {n} frames")
    if frames_first:
        return (per_input.unflatten(0, (n, -1)) + per_frame.unsqueeze(1)).flatten(0, 1)
    return (per_input.unflatten(0, (-1, n)) + per_frame.unsqueeze(0)).flatten(0, 1)


class _ChannelGate(nn.Module):
    """`x * sigmoid(mlp(avgpool(x)) + mlp(maxpool(x)))`, mlp = Linear(C, C/r), ReLU, Linear(C/r, C).

    The MLP is an `nn.Sequential(Flatten, Linear, ReLU, Linear)` so its Linear layers are
    `mlp.1` and `mlp.3`, as in the public CBAM.
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(channels, channels // reduction), nn.ReLU(),
                                 nn.Linear(channels // reduction, channels))

    def forward(self, x: Tensor) -> Tensor:
        att = self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1))
        return x * torch.sigmoid(att)[:, :, None, None]


class _BasicConv(nn.Module):
    """A conv with bias and nothing else: the public `BasicConv(relu=False, bn=False)`."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size, padding=(kernel_size - 1) // 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class _SpatialGate(nn.Module):
    """`x * sigmoid(conv7x7([max_c(x), mean_c(x)]))` (channel max first, as the public ChannelPool)."""

    def __init__(self):
        super().__init__()
        self.spatial = _BasicConv(2, 1, 7)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.spatial(pooled))


class CBAM(nn.Module):
    """Convolutional block attention (Woo et al. 2018): channel gate, then spatial gate."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.ChannelGate = _ChannelGate(channels, reduction)  # noqa: N815 (public name)
        self.SpatialGate = _SpatialGate()  # noqa: N815

    def forward(self, x: Tensor) -> Tensor:
        return self.SpatialGate(self.ChannelGate(x))


class FeatureFusionBlock(nn.Module):
    """Fuses value-encoder features with the key encoder's f16: `x = block1(cat[x, f16])`,
    `out = block2(x + CBAM(x))`. (N, in_dim, h, w) -> (N, out_dim, h, w)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.block1 = ResBlock(in_dim, out_dim)
        self.attention = CBAM(out_dim)
        self.block2 = ResBlock(out_dim, out_dim)

    def forward(self, x: Tensor, f16: Tensor) -> Tensor:
        """x (n * k, C, h, w) value features, grouped frame-major; f16 (n, C16, h, w), one per
        frame, shared by its k objects: its part of `block1` is computed once per frame."""
        x = self.block1.forward_shared(x, self.block1.shared_part(f16), frames_first=True)
        return self.block2(x + self.attention(x))


class KeyProjection(nn.Module):
    """3x3 conv with bias from the key encoder's f16 to a key space (`key_proj.weight`)."""

    def __init__(self, in_dim: int, key_dim: int):
        super().__init__()
        self.key_proj = nn.Conv2d(in_dim, key_dim, 3, padding=1)
        nn.init.orthogonal_(self.key_proj.weight)
        nn.init.zeros_(self.key_proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.key_proj(x)


class UpsampleBlock(nn.Module):
    """`out_conv(skip_conv(skip) + bilinear_x2(up))` (align_corners=False)."""

    def __init__(self, skip_dim: int, up_dim: int, out_dim: int):
        super().__init__()
        self.skip_conv = nn.Conv2d(skip_dim, up_dim, 3, padding=1)
        self.out_conv = ResBlock(up_dim, out_dim)

    def forward(self, skip: Tensor, up: Tensor) -> Tensor:
        x = self.skip_conv(skip) + F.interpolate(up, scale_factor=2, mode="bilinear", align_corners=False)
        return self.out_conv(x)


class Decoder(nn.Module):
    """Mask decoder: stride-16 features + f8 + f4 skips -> one logit map per input at stride 4.

    (N, in_dim, h, w), (N, f8_dim, 2h, 2w), (N, f4_dim, 4h, 4w) -> (N, 1, 4h, 4w). The caller
    upsamples x4 (bilinear, align_corners=False) and applies the sigmoid, as the public code does.
    """

    def __init__(self, in_dim: int = 1024, f8_dim: int = 512, f4_dim: int = 256,
                 mid_dim: int = 512, out_dim: int = 256):
        super().__init__()
        self.compress = ResBlock(in_dim, mid_dim)
        self.up_16_8 = UpsampleBlock(f8_dim, mid_dim, out_dim)
        self.up_8_4 = UpsampleBlock(f4_dim, out_dim, out_dim)
        self.pred = nn.Conv2d(out_dim, 1, 3, padding=1)

    def forward(self, x: Tensor, f8: Tensor, f4: Tensor) -> Tensor:
        x = self.compress(x)
        x = self.up_16_8(f8, x)
        x = self.up_8_4(f4, x)
        return self.pred(F.relu(x))

    def shared(self, qv16: Tensor, f8: Tensor, f4: Tensor) -> DecoderShared:
        """The object-independent part of decoding n frames: qv16 (n, Cq, h, w) (the trailing
        channels of the decoder's input), f8 (n, C8, 2h, 2w), f4 (n, C4, 4h, 4w).

        Per object the decoder reads cat([value, qv16]) and the skips f8, f4 of its frame; the
        skip convs and qv16's share of the compress block depend on the frame only. Computing
        them once per frame removes ~38% of the decoder's work for every object after the first
        (at 854x480: 38 of 99 GMAC per object and frame).
        """
        return DecoderShared(self.compress.shared_part(qv16), self.up_16_8.skip_conv(f8),
                             self.up_8_4.skip_conv(f4))

    def decode_objects(self, value: Tensor, shared: DecoderShared) -> Tensor:
        """value (k * n, Cv, h, w) object-major (object o's n frames at o*n ... o*n + n - 1),
        shared from :meth:`shared` for the n frames -> logits (k * n, 1, 4h, 4w).

        Equals ``forward(cat([value, qv16]), f8, f4)`` per object up to float rounding."""
        x = self.compress.forward_shared(value, shared.compress, frames_first=False)
        up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = self.up_16_8.out_conv(add_per_frame(up, shared.skip8, frames_first=False))
        up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = self.up_8_4.out_conv(add_per_frame(up, shared.skip4, frames_first=False))
        return self.pred(F.relu(x))


class DecoderShared(NamedTuple):
    """What :meth:`Decoder.shared` computes once per frame (n frames)."""

    compress: tuple[Tensor, Tensor]   # qv16's part of compress.downsample and compress.conv1
    skip8: Tensor                     # up_16_8.skip_conv(f8)
    skip4: Tensor                     # up_8_4.skip_conv(f4)
