"""TTVOS network modules: long-term template encoder / query and the refinement decoder.

Shapes below are for the ResNet-18 backbone (s16: 512 ch, s8: 128 ch, s4: 64 ch) and a
240 x 432 input (s16 15 x 27, s8 30 x 54, s4 60 x 108); other backbones change the channel
counts through the constructors' arguments exactly as the public code (HYOJINPARK/TTVOS,
``models/TTVOS_model.py``: GlobalContextMemoryMV1 / GlobalContextQueryMV1,
``models/Dnc_models.py``: REFINEV3) derives them.

Attention clue A (the "mask history", paper Sec. III-B-1): (B, 6, h8, w8) with channels
(bg, fg) of the newest mask, then of the one before, then of the one before that.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import vos_kernels

#: Channels of the attention clue: three (bg, fg) heatmaps (paper: n = 3).
HISTORY_CHANNELS = 6
#: Coordinate channels (cy, cx, r) appended to the stride-8 features.
COORD_CHANNELS = 3


def conv_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Sequential:
    """Conv2d (with bias) then ReLU; the public ``ConvRelu``, including its initialisation.

    The public module re-initialises its conv with ``kaiming_uniform_`` at the ReLU gain
    (bound sqrt(6 / fan_in)) and a zero bias, 2.45x the spread of PyTorch's default
    (bound 1 / sqrt(fan_in)). Only training from scratch sees the difference, and there it
    matters: with the default the decoder's seven ConvRelu layers shrink the signal, and the
    head needs ~100 steps before it predicts any foreground at all.
    """
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding)
    nn.init.kaiming_uniform_(conv.weight, nonlinearity="relu")
    nn.init.zeros_(conv.bias)
    return nn.Sequential(conv, nn.ReLU(inplace=True))


def grouped_embedding(in_ch: int, out_ch: int, group_size: int) -> nn.Sequential:
    """1x1 projection, 5x5 conv in groups of ``group_size`` channels, LeakyReLU(0.2)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 1),
        nn.Conv2d(out_ch, out_ch, 5, padding=2, groups=out_ch // group_size),
        nn.LeakyReLU(0.2, inplace=True),
    )


class TemplateEncoder(nn.Module):
    """Embeds a frame into the key / value pair whose outer product is a template (Eq. 2).

    Input X = concat[s8, cy, cx, r, A] (B, C8 + 9, h, w). Output key, value (B, C8, h * w);
    the template is I = softmax(key @ value^T / sqrt(h * w)) over the value channels, built by
    ``vos_kernels.template_update`` (which also blends it into the running template, Eq. 3).
    Public module ``gcm`` (GlobalContextMemoryMV1, group size 4).
    """

    def __init__(self, in_ch: int, channels: int, group_size: int = 4):
        super().__init__()
        self.key = grouped_embedding(in_ch, channels, group_size)
        self.value = grouped_embedding(in_ch, channels, group_size)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.key(x).flatten(2), self.value(x).flatten(2)


class TemplateQuery(nn.Module):
    """Long-term matching: the template applied to the current frame (paper Fig. 3b).

    Input X (B, C8 + 9, h, w) and template G (B, C8, C8). act = G @ value(X) (the matching
    ``template @ query``, an ordinary batched matmul), then
    L = ReLU(conv1x1(conv5x5 grouped(concat[feature(X), act]))) (B, C8, h, w).
    Public module ``gcq`` (GlobalContextQueryMV1).
    """

    def __init__(self, in_ch: int, channels: int, group_size: int = 4):
        super().__init__()
        self.value = grouped_embedding(in_ch, channels, group_size)
        self.feature = grouped_embedding(in_ch, channels, group_size)
        # Groups of 4 input channels (channels // 2 groups over 2 * channels), no activation
        # between the two blend convs, as published.
        self.blend = nn.Sequential(
            nn.Conv2d(2 * channels, 2 * channels, 5, padding=2, groups=channels // 2),
            nn.Conv2d(2 * channels, channels, 1),
        )

    def forward(self, x: Tensor, template: Tensor) -> Tensor:
        value = self.value(x)
        b, c, h, w = value.shape
        matched = torch.bmm(template, value.reshape(b, c, h * w)).reshape(b, -1, h, w)
        return F.relu(self.blend(torch.cat([self.feature(x), matched], dim=1)))


class RefinementDecoder(nn.Module):
    """Short-term matching, adaptive weight and the upsampling decoder (public REFINEV3).

    Inputs for B object tracks: s16 (B, C16, h16, w16) of the current frame, the long-term
    match L (B, C8, h8, w8), s4 (B, C4, h4, w4), the attention clue A (B, 6, h8, w8) and the
    previous frame's s16 (B, C16, h16, w16). With M = min(128, C4), S = min(2M, C16):

        A16 = avgpool3/2(A)                                  (B, 6, h16, w16)
        ST  = ConvRelu3x3(6 + C16 -> S)(cat[A16, prev s16])  short-term matching
        u16 = ConvRelu3x3(S + C16 -> M)(cat[s16, ST]);  o16 = Deconv4/2(u16)   (B, 2, h8, w8)
        u8  = cat[ConvRelu1x1(C8 -> M)(L), o16]                              (B, M + 2, h8, w8)
        w   = sigmoid(conv1x1(avgpool(ConvRelu3x3/2(u8))))    adaptive weight (Eq. 4), (B,)
        u8b = ConvRelu3x3(u8);  o8 = Deconv4/2(u8b)                           (B, 2, h4, w4)
        u4  = ConvRelu3x3(cat[ConvRelu1x1(s4), o8])
        o4  = Deconv4/2(cat[Deconv4/2(o16), o8, u4])                          (B, 8, h2, w2)
        logits = PixelShuffle(2)(o4)                                          (B, 2, H, W)

    The transition map (Eq. 5, training only) is conv3x3(u8b) -> (B, 2, h8, w8).
    """

    def __init__(self, ch_s16: int, ch_s8: int, ch_s4: int):
        super().__init__()
        inter = min(128, ch_s4)
        short = min(2 * inter, ch_s16)
        up = 2  # every deconvolution outputs a (bg, fg) pair
        self.short_term = conv_relu(HISTORY_CHANNELS + ch_s16, short, 3, 1, 1)
        self.blend_s16 = conv_relu(short + ch_s16, inter, 3, 1, 1)
        self.long_term = conv_relu(ch_s8, inter, 1)
        self.blend_s8 = conv_relu(inter + up, inter, 3, 1, 1)
        self.adaptive_weight = nn.Sequential(
            conv_relu(inter + up, (inter + up) // 2, 3, 2, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d((inter + up) // 2, 1, 1),
            nn.Sigmoid(),
        )
        self.skip_s4 = conv_relu(ch_s4, inter, 1)
        self.blend_s4 = conv_relu(inter + up, inter, 3, 1, 1)
        self.up_s16 = nn.ConvTranspose2d(inter, up, 4, 2, 1)
        self.up_s16_twice = nn.ConvTranspose2d(up, up, 4, 2, 1)
        self.up_s8 = nn.ConvTranspose2d(inter, up, 4, 2, 1)
        self.up_s4 = nn.ConvTranspose2d(inter + 2 * up, 4 * up, 4, 2, 1)
        self.pixel_shuffle = nn.PixelShuffle(2)
        # Training-only heads: the transition map (paper Eq. 5) and the public code's extra
        # long-term template mask head (``predictor_Tmp``, BCE against the stride-8 mask).
        self.transition = nn.Conv2d(inter, up, 3, 1, 1)
        self.template_mask = nn.Conv2d(ch_s8, 1, 3, 1, 1)

    def forward(self, s16: Tensor, long_term: Tensor, s4: Tensor, history: Tensor,
                prev_s16: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Returns logits (B, 2, H, W), adaptive weight (B,) and u8b (B, M, h8, w8)."""
        history16 = F.avg_pool2d(history, 3, 2, 1)
        short = self.short_term(torch.cat([history16, prev_s16], dim=1))
        u16 = self.blend_s16(torch.cat([s16, short], dim=1))
        out16 = self.up_s16(u16)
        u8 = torch.cat([self.long_term(long_term), out16], dim=1)
        weight = self.adaptive_weight(u8).flatten()
        u8b = self.blend_s8(u8)
        out8 = self.up_s8(u8b)
        u4 = self.blend_s4(torch.cat([self.skip_s4(s4), out8], dim=1))
        out4 = self.up_s4(torch.cat([self.up_s16_twice(out16), out8, u4], dim=1))
        return self.pixel_shuffle(out4), weight, u8b


class TTVOSHead(nn.Module):
    """Everything of TTVOS after the backbone, for B object tracks at once.

    The per-track state is (history A (B, 6, h8, w8), previous s16 (B, C16, h16, w16),
    template G (B, C8, C8)). The backbone's features are shared by all tracks of a frame.
    """

    def __init__(self, ch_s16: int, ch_s8: int, ch_s4: int, template_group_size: int = 4):
        super().__init__()
        in_ch = ch_s8 + COORD_CHANNELS + HISTORY_CHANNELS
        self.template_encoder = TemplateEncoder(in_ch, ch_s8)
        self.template_query = TemplateQuery(in_ch, ch_s8, template_group_size)
        self.decoder = RefinementDecoder(ch_s16, ch_s8, ch_s4)

    def template_input(self, s8_with_coords: Tensor, history: Tensor) -> Tensor:
        """X = concat[s8, cy, cx, r, A]; s8_with_coords (1 or B, C8 + 3, h, w) broadcasts."""
        b = history.shape[0]
        return torch.cat([s8_with_coords.expand(b, -1, -1, -1), history], dim=1)

    def new_template(self, x: Tensor, template: Tensor | None = None,
                     weight: Tensor | None = None) -> Tensor:
        """LT_0 = I (template None), else LT_{t+1} = LT_t / (1 + w) + I w / (1 + w) (Eq. 2-3).

        The template is a running average over the whole video: it is built and kept in
        float32 whatever the autocast precision of the encoder (no-op casts in float32)."""
        key, value = self.template_encoder(x)
        if template is not None:
            template = template.float()
        if weight is not None:
            weight = weight.float()
        return vos_kernels.template_update(key.float(), value.float(), template, weight)

    def segment(self, s16: Tensor, s8_with_coords: Tensor, s4: Tensor, history: Tensor,
                prev_s16: Tensor, template: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One frame for B tracks -> (logits (B, 2, H, W), weight (B,), u8b, L)."""
        b = history.shape[0]
        long_term = self.template_query(self.template_input(s8_with_coords, history), template)
        logits, weight, u8b = self.decoder(s16.expand(b, -1, -1, -1), long_term,
                                           s4.expand(b, -1, -1, -1), history, prev_s16)
        return logits, weight, u8b, long_term
