"""3x3 convolutions as Winograd F(2x2, 3x3) inside compiled graphs, for CPU inference.

A 3x3 convolution (stride 1, zero padding = dilation, one group) computes each 2x2 block of
outputs from a 4x4 window d of the input. Winograd's minimal filtering (Lavin & Gray, "Fast
Algorithms for Convolutional Neural Networks", CVPR 2016) writes that block as

    Y = A^T [ sum_c (G g_kc G^T) * (B^T d_c B) ] A            (* elementwise, 4x4)

    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]

so for T tiles, C input and K output channels the convolution becomes 16 independent matrix
products V_xi (T, C) @ U_xi (C, K) (xi = the 16 positions of the 4x4 transform) plus cheap
transforms: 16 C K T multiply-adds instead of the direct 36 C K T, 2.25x fewer. A dilated
convolution (dilation d) is the same convolution on each of the d x d interleaved sub-grids of
its input, so it is computed on those as a batch.

Where it pays: the products run as one bfloat16 (or float32) ``torch.bmm`` at the CPU's matrix
peak, as oneDNN's direct convolution does, so the 2.25x fewer multiply-adds are the gain, and
the transforms (written here as slices, adds and subtractions that Inductor fuses into
vectorised loops, the output transform together with the bias and whatever follows: ReLU, a
residual add) are the cost. The cost grows with C + K per tile and the gain with C K, so only
convolutions with C, K >= ``MIN_CHANNELS`` are converted. The zero padding is materialised by an
operator of its own (:func:`zero_pad_rows_cols`): fused into the input transform, its
bounds-checked loads made that transform 4x slower and kept 128-channel layers from paying.
Measured with ``benchmarks/bench_winograd.py --layers`` (AMD EPYC with AVX-512-BF16, no AMX, 2
threads; ``benchmarks/results/winograd.md``), one convolution + bias + residual + ReLU,
compiled, speed-up of Winograd over the direct convolution in bfloat16 (sweep of
``BAND_BYTES`` 2-12 MiB, noisy runs): 512 channels at 30 x 54 1.55-1.75x, 256 at 30 x 54
1.3-1.6x and at 120 x 216 1.35-1.7x, 128 at 60 x 108 1.2-1.4x and at 120 x 216 1.0-1.4x, 64 at
120 x 216 0.7-1.14x, hence 128 channels. Whole tracking steps (480p, one object,
``--steps``, bfloat16), C = K only: TTVOS 154.5 -> 129.6 ms (1.19x; 9 convolutions converted),
CRVOS 277.8 -> 249.0 ms (1.12x; 11), RGMP 735.3 -> 556.8 ms (1.32x; 25); before the padding
operator (256 channels and up, masked loads) 1.10x, 1.08x and 1.10x. C != K (the per-tile
ratio of gain to cost, C K / (C + K), is 64.5 for CRVOS's 130 -> 128 mask blends, 86 for 261 ->
128, 171 for TTVOS's 256 -> 512, against 64 for 128 -> 128), measured on the whole steps with
the padding operator, 15 / 15 / 7 interleaved rounds: CRVOS 257.5 -> 250.0 ms (+3 layers),
RGMP 625.7 -> 609.2 ms (+2), TTVOS 142.2 -> 142.1 ms (+2; before the padding operator its 256 ->
512 convolution, which meets a 1x1 downsample in a residual add, made the step slower). With AMX (not
measured: no such CPU here) the direct bfloat16 convolutions run on the matrix units, several
times faster, while the transforms do not, so the fastest preset leaves Winograd off there
(``engine.presets``); ``--winograd`` / ``winograd=True`` turns it on.

Bands: the transformed input V (16, T, C) and the products M (16, T, K) are 4x the size of the
activations they come from. Once they outgrow the caches the transforms and the products run at
memory speed: RGMP's 256-channel convolutions at 120 x 216 (V 53 MB in bfloat16) measured 0.8x
the direct convolution's speed, and its tracking step gained nothing from Winograd. So an input
whose V would exceed ``BAND_BYTES`` is done in horizontal bands of tile rows (each band reads its
two-row halo), each band transformed, multiplied and transformed back while it is in cache.
Each band is its own set of kernels in the compiled graph (Inductor unrolls the loop), so bands
cost compile time: with 4 MiB bands CRVOS's step compiled in 68 s against 33 s with none and
RGMP's in 264 s against 128 s with 12 MiB, at the same step time (CRVOS 293.7 / 294.1 ms, RGMP
583.2 / 583.1 ms, 9 and 7 interleaved rounds), hence 12 MiB: V and M of a band together still
fit the 32 MB L3.

Outside a compiled graph (eager frames, training) a converted module runs the ordinary
convolution: the transforms are only cheap once fused. Under freezing the weight transform
U = G g G^T is computed once, at compile time, in float32.

Numerics: exact in exact arithmetic; in floating point the transforms add and subtract up to 4
(input) and 9 (output) terms. In float32 the difference to the direct convolution is float
rounding (~1e-6 relative); under bfloat16 autocast the transformed input and the products are
rounded to bfloat16 like the direct convolution's operands, with 1.5-2x its error (measured max
|difference| to float32 0.015 vs 0.009 on outputs of magnitude ~5 for C = 512).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: convert a 3x3 convolution with this many input and output channels or more (128 gains
#: 1.2-1.4x in bfloat16, 64 only 1.1x: see the module docstring)
MIN_CHANNELS = 128

#: the most bytes of transformed input V computed at once; larger inputs go in bands of tile rows
#: (per layer 4 MiB looked best in a noisy 2-12 MiB sweep, but whole steps run as fast with 12 MiB
#: and compile in half the time: see the module docstring)
BAND_BYTES = 12 * 2**20

# G (4, 3) of F(2x2, 3x3): U = G g G^T.
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def weight_transform(weight: Tensor) -> Tensor:
    """(K, C, 3, 3) convolution weight -> U (16, C, K), U[4a + b, c, k] = (G g_kc G^T)[a, b], in
    float32 (float64 for a float64 weight): a bfloat16 U is rounded once, from the exact sums."""
    dtype = torch.promote_types(weight.dtype, torch.float32)
    g = torch.tensor(_G, dtype=dtype, device=weight.device)
    u = torch.einsum("ai,kcij,bj->abck", g, weight.to(dtype), g)
    return u.reshape(16, weight.shape[1], weight.shape[0])


def _input_rows(d0: Tensor, d1: Tensor, d2: Tensor, d3: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """B^T applied along one axis of a 4-window: (d0 - d2, d1 + d2, d2 - d1, d1 - d3)."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


def _output_rows(m0: Tensor, m1: Tensor, m2: Tensor, m3: Tensor) -> tuple[Tensor, Tensor]:
    """A^T applied along one axis: (m0 + m1 + m2, m1 - m2 - m3)."""
    return m0 + m1 + m2, m1 - m2 - m3


@torch.library.custom_op("vos_models::zero_pad_rows_cols", mutates_args=())
def zero_pad_rows_cols(x: Tensor, top: int, bottom: int, left: int, right: int) -> Tensor:
    """(N, H, W, C) -> (N, top + H + bottom, left + W + right, C), contiguous, zeros around ``x``.

    An operator of its own so that a compiled graph materialises the padded input once: inlined
    into the input transform (what Inductor does with ``F.pad``), every one of its 64 loads per
    tile became a bounds-checked masked load, 4x slower (2.06 vs 0.49 ms for 512 channels at
    30 x 54, bfloat16)."""
    return F.pad(x, (0, 0, left, right, top, bottom)).contiguous()


@zero_pad_rows_cols.register_fake
def _(x: Tensor, top: int, bottom: int, left: int, right: int) -> Tensor:
    n, h, w, c = x.shape
    return x.new_empty(n, top + h + bottom, left + w + right, c)


def _pad_backward(ctx, grad: Tensor):
    h, w = ctx.size
    return grad[:, ctx.top:ctx.top + h, ctx.left:ctx.left + w], None, None, None, None


def _pad_setup(ctx, inputs, output):
    x, top, _, left, _ = inputs
    ctx.size, ctx.top, ctx.left = x.shape[1:3], top, left


zero_pad_rows_cols.register_autograd(_pad_backward, setup_context=_pad_setup)


def winograd_conv3x3(x: Tensor, u: Tensor, bias: Tensor | None = None, dilation: int = 1,
                     band_bytes: int | None = None) -> Tensor:
    """F.conv2d(x, weight, bias, stride=1, padding=dilation, dilation=dilation) by F(2x2, 3x3).

    Args:
        x: (N, C, H, W), any memory format (channels-last reads fastest).
        u: (16, C, K) the transformed weight, :func:`weight_transform`.
        bias: (K,) or None.
        dilation: the convolution's dilation (and padding), >= 1.
        band_bytes: the most bytes of transformed input V (16, T_band, C) computed at once
            (default ``BAND_BYTES``): a larger input is done in horizontal bands of tile rows,
            each transformed, multiplied and transformed back while its V and M are in cache.

    Returns (N, K, H, W) in channels-last memory format, in the products' dtype (bfloat16 under
    CPU autocast).
    """
    n, c, h, w = x.shape
    k = u.shape[-1]
    xl = x.permute(0, 2, 3, 1)                                       # (N, H, W, C)
    if dilation > 1:
        # The d x d interleaved sub-grids, each convolved with dilation 1 and padding 1.
        d = dilation
        hd, wd = -(-h // d), -(-w // d)
        xl = F.pad(xl, (0, 0, 0, wd * d - w, 0, hd * d - h))          # zeros: as the padding
        xl = xl.reshape(n, hd, d, wd, d, c).permute(0, 2, 4, 1, 3, 5).reshape(n * d * d, hd, wd, c)
    nb, hh, ww = xl.shape[:3]
    th, tw = -(-hh // 2), -(-ww // 2)                                # 2x2 output tiles
    xp = zero_pad_rows_cols(xl, 1, 1 + 2 * th - hh, 1, 1 + 2 * tw - ww)  # (nb, 2 th + 2, 2 tw + 2, C)
    row_bytes = 16 * nb * tw * c * x.element_size()                  # V (x's dtype) of one row of tiles
    bands = max(1, -(-row_bytes * th // (BAND_BYTES if band_bytes is None else band_bytes)))
    rows = -(-th // bands)                                           # tile rows per band (equal bands)
    u = u.to(x.dtype)                                                # once, not per band
    parts = [_tile_rows(xp[:, 2 * t0:2 * min(t0 + rows, th) + 2], u) for t0 in range(0, th, rows)]
    y = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    y = y[:, :hh, :ww]                                               # (nb, hh, ww, K)
    if dilation > 1:
        d = dilation
        y = y.reshape(n, d, d, hh, ww, k).permute(0, 3, 1, 4, 2, 5).reshape(n, hh * d, ww * d, k)[:, :h, :w]
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.permute(0, 3, 1, 2)


def _tile_rows(xp: Tensor, u: Tensor) -> Tensor:
    """One band: padded input rows (nb, 2 t + 2, 2 tw + 2, C) and U (16, C, K) in their dtype ->
    output rows (nb, 2 t, 2 tw, K)."""
    nb, t, tw, c = xp.shape[0], (xp.shape[1] - 2) // 2, (xp.shape[2] - 2) // 2, xp.shape[3]
    k = u.shape[-1]
    v = []
    for row in _input_rows(*(xp[:, i:i + 2 * t:2] for i in range(4))):
        v.extend(_input_rows(*(row[:, :, j:j + 2 * tw:2] for j in range(4))))
    v = torch.stack(v).reshape(16, nb * t * tw, c)                  # V (16, T, C)
    m = torch.bmm(v, u).reshape(4, 4, nb, t, tw, k)                 # M (16, T, K)
    y = torch.stack([torch.stack(_output_rows(*(r[j] for j in range(4))), dim=3)
                     for r in _output_rows(*(m[i] for i in range(4)))], dim=2)
    return y.reshape(nb, 2 * t, 2 * tw, k)                          # (nb, t, 2, tw, 2, K) -> rows, cols


def computable(conv: nn.Module) -> bool:
    """A plain ``nn.Conv2d`` that Winograd F(2x2, 3x3) computes: 3x3, stride 1, one group, zero
    padding equal to its (square) dilation."""
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.groups == 1 and conv.padding_mode == "zeros" and conv.dilation[0] == conv.dilation[1]
            and tuple(conv.padding) == tuple(conv.dilation))


def is_convertible(conv: nn.Module) -> bool:
    """:func:`computable`, and where it pays: C_in and C_out >= ``MIN_CHANNELS``."""
    return computable(conv) and min(conv.in_channels, conv.out_channels) >= MIN_CHANNELS


class WinogradConv2d(nn.Module):
    """A converted ``nn.Conv2d`` (:func:`computable`): the same ``weight`` and ``bias``
    parameters (shared with the module it replaces, state-dict keys unchanged); Winograd
    F(2x2, 3x3) when compiled (``torch.compile``, ``torch.export``), the ordinary convolution
    in eager mode."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if not computable(conv):
            raise ValueError(f"WinogradConv2d: expected a 3x3 nn.Conv2d with stride 1, one group and zero padding "
                             f"= dilation, got {conv}")
        self.weight = conv.weight
        self.bias = conv.bias
        self.dilation = conv.dilation[0]
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels

    def forward(self, x: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            return winograd_conv3x3(x, weight_transform(self.weight), self.bias, self.dilation)
        return F.conv2d(x, self.weight, self.bias, 1, self.dilation, self.dilation)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size=(3, 3), dilation={self.dilation}, winograd=F(2x2,3x3)"


def with_winograd_convolutions(module: nn.Module) -> tuple[nn.Module, list[str]]:
    """A copy of ``module`` whose convertible 3x3 convolutions are :class:`WinogradConv2d`, and
    their names. The copy shares every parameter and buffer with ``module`` (no second copy of
    the weights in memory); ``module`` itself is left as it is."""
    shared = {id(t): t for t in list(module.parameters()) + list(module.buffers())}
    converted = copy.deepcopy(module, memo=shared)
    names = []
    for name, child in list(converted.named_modules()):
        if is_convertible(child):
            parent_name, _, attr = name.rpartition(".")
            setattr(converted.get_submodule(parent_name), attr, WinogradConv2d(child))
            names.append(name)
    return converted, names
