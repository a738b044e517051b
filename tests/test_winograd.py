"""Winograd F(2x2, 3x3) convolutions of the compiled CPU tracking step (vos_models.engine.winograd):
the arithmetic against F.conv2d (odd sizes, dilations, batches, non-contiguous inputs, gradients),
which convolutions are converted, that conversion shares the weights and leaves eager results
bit-identical, and the engine option (compiled step against eager, the refusals)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.test_engine_fast_paths import probabilities, small_method, video
from vos_models.engine import winograd
from vos_models.engine.inference import InferenceEngine
from vos_models.errors import VOSInputError

torch.set_num_threads(1)


def _direct_and_winograd(x, weight, bias, dilation):
    expected = F.conv2d(x, weight, bias, 1, dilation, dilation)
    got = winograd.winograd_conv3x3(x, winograd.weight_transform(weight).to(x.dtype), bias, dilation)
    return expected, got


@pytest.mark.parametrize("dilation", [1, 2, 3])
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (7, 5), (9, 13), (16, 16)])
def test_matches_the_direct_convolution_in_float64(size, dilation):
    # Exact in exact arithmetic: in float64 only rounding of a few dozen terms (~1e-15 relative).
    torch.manual_seed(0)
    x = torch.randn(2, 5, *size, dtype=torch.float64)
    weight = torch.randn(7, 5, 3, 3, dtype=torch.float64)
    bias = torch.randn(7, dtype=torch.float64)
    for b in (bias, None):
        expected, got = _direct_and_winograd(x, weight, b, dilation)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("band_rows", [1, 2, 3])
def test_bands_of_tile_rows_give_the_same_convolution(band_rows, dilation, monkeypatch):
    # A large input is done in bands of tile rows (band_bytes): each band must read its own rows
    # plus the halo, the last band may be shorter, and the bands must tile the output exactly.
    torch.manual_seed(4)
    x = torch.randn(2, 5, 13, 9, dtype=torch.float64)               # 7 (dil 1) / 4 (dil 2) tile rows
    weight = torch.randn(7, 5, 3, 3, dtype=torch.float64)
    bias = torch.randn(7, dtype=torch.float64)
    subgrids = dilation * dilation
    tiles_per_row = -(-(-(-9 // dilation)) // 2)
    row_bytes = 16 * 2 * subgrids * tiles_per_row * 5 * x.element_size()
    expected = F.conv2d(x, weight, bias, 1, dilation, dilation)
    bands = []
    one_band = winograd._tile_rows
    monkeypatch.setattr(winograd, "_tile_rows", lambda xp, u: bands.append(xp.shape[1]) or one_band(xp, u))
    got = winograd.winograd_conv3x3(x, winograd.weight_transform(weight), bias, dilation,
                                    band_bytes=band_rows * row_bytes)
    tile_rows = -(-(-(-13 // dilation)) // 2)
    assert len(bands) == -(-tile_rows // band_rows) and sum(rows - 2 for rows in bands) == 2 * tile_rows
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    whole = winograd.winograd_conv3x3(x, winograd.weight_transform(weight), bias, dilation, band_bytes=1 << 40)
    torch.testing.assert_close(got, whole, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_the_padding_operator(dtype):
    # zero_pad_rows_cols materialises the padded input inside compiled graphs: F.pad's values,
    # contiguous, its fake kernel's shape, F.pad's gradient, and torch.library.opcheck (schema,
    # fake tensor, autograd registration, AOT dispatch).
    torch.manual_seed(5)
    x = torch.randn(2, 9, 6, 12, dtype=dtype)[:, :, :5, ::2]            # (N, H, W, C) non-contiguous
    got = winograd.zero_pad_rows_cols(x, 1, 2, 1, 0)
    # exact: both are copies of the same values and zeros, no arithmetic on either path
    torch.testing.assert_close(got, F.pad(x, (0, 0, 1, 0, 1, 2)), rtol=0, atol=0)
    assert got.is_contiguous() and got.shape == (2, 12, 6, 6)
    torch.library.opcheck(winograd.zero_pad_rows_cols, (x, 1, 2, 1, 0))
    if dtype == torch.float64:
        leaf = x.detach().requires_grad_()
        torch.autograd.gradcheck(lambda t: winograd.zero_pad_rows_cols(t, 0, 3, 2, 1), (leaf,))


def test_non_contiguous_inputs_and_float32():
    torch.manual_seed(1)
    weight = torch.randn(6, 4, 3, 3)
    base = torch.randn(1, 8, 11, 20)
    for x in (base[:, ::2, :, ::2],                                  # strided view
              base[:, :4].contiguous(memory_format=torch.channels_last),
              base[:, :4].transpose(2, 3)):                          # (1, 4, 20, 11), transposed strides
        expected, got = _direct_and_winograd(x, weight, None, 1)
        # float32: the transforms add up to 9 terms per output; the sums differ by rounding only
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_gradients_match_the_direct_convolution():
    torch.manual_seed(2)
    x = torch.randn(1, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda a, w, b: winograd.winograd_conv3x3(a, winograd.weight_transform(w).double(), b, 2),
                             (x, weight, bias))
    grad = torch.randn(1, 4, 6, 7, dtype=torch.float64)
    expected = torch.autograd.grad(F.conv2d(x, weight, bias, 1, 2, 2), (x, weight, bias), grad)
    got = torch.autograd.grad(winograd.winograd_conv3x3(x, winograd.weight_transform(weight).double(), bias, 2),
                              (x, weight, bias), grad)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)


def test_which_convolutions_are_converted():
    wide = winograd.MIN_CHANNELS
    assert winograd.is_convertible(nn.Conv2d(wide, wide, 3, padding=1))
    assert winograd.is_convertible(nn.Conv2d(wide, wide, 3, padding=2, dilation=2, bias=False))
    assert winograd.is_convertible(nn.Conv2d(wide + 2, wide, 3, padding=1))     # C != K (mask blends)
    assert winograd.is_convertible(nn.Conv2d(wide, 2 * wide, 3, padding=1))
    for conv in (nn.Conv2d(wide, wide, 3, stride=2, padding=1),       # strided
                 nn.Conv2d(wide, wide, 3, padding=1, groups=2),       # grouped
                 nn.Conv2d(wide, wide, 3, padding=0),                 # padding != dilation
                 nn.Conv2d(wide, wide, 3, padding=1, padding_mode="reflect"),
                 nn.Conv2d(wide, wide, 1),                            # not 3x3
                 nn.Conv2d(wide, wide, (3, 1), padding=(1, 0)),
                 nn.Conv2d(wide // 2, wide // 2, 3, padding=1),       # too narrow to pay
                 nn.Conv2d(wide // 2, 2 * wide, 3, padding=1),        # one side too narrow
                 nn.Conv2d(2 * wide, wide - 1, 3, padding=1),
                 nn.Conv2d(wide, wide, 3, padding=(1, 2), dilation=(1, 2)),
                 nn.ConvTranspose2d(wide, wide, 3, padding=1)):
        assert not winograd.is_convertible(conv), conv
    with pytest.raises(ValueError, match="expected a 3x3 nn.Conv2d with stride 1"):
        winograd.WinogradConv2d(nn.Conv2d(4, 4, 1))
    assert isinstance(winograd.WinogradConv2d(nn.Conv2d(4, 6, 3, padding=1)), nn.Module)  # any width computes


def _net(channels):
    return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(channels, channels, 3, padding=2, dilation=2), nn.ReLU(),
                         nn.Conv2d(channels, channels, 3, stride=2, padding=1)).eval()


def test_conversion_shares_the_weights_and_keeps_eager_results_bit_identical(monkeypatch):
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 8)
    torch.manual_seed(3)
    net = _net(8)
    converted, names = winograd.with_winograd_convolutions(net)
    assert names == ["2"]  # the stride-2 one and the 3 -> 8 one stay
    assert isinstance(converted[2], winograd.WinogradConv2d) and type(net[2]) is nn.Conv2d  # original untouched
    assert converted[2].weight is net[2].weight and converted[2].bias is net[2].bias
    assert list(converted.state_dict()) == list(net.state_dict())
    x = torch.randn(1, 3, 13, 18)
    with torch.no_grad():
        assert torch.equal(converted(x), net(x))  # eager: the same direct convolution


def test_compiled_conversion_matches_eager(monkeypatch):
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 8)
    torch.manual_seed(4)
    net = _net(8)
    converted, _ = winograd.with_winograd_convolutions(net)
    x = torch.randn(1, 3, 13, 18)
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(converted, fullgraph=True, dynamic=False)(x)
        graph = torch._dynamo.explain(converted)(x).graphs[0]
    assert any("bmm" in str(node.target) for node in graph.graph.nodes)  # the Winograd products ran
    torch.testing.assert_close(compiled, net(x).detach(), rtol=1e-4, atol=1e-4)


def test_engine_option_needs_the_compiled_cpu_tracking_step():
    with pytest.raises(VOSInputError, match="winograd=True .* needs compile=True"):
        InferenceEngine(small_method("ttvos"), winograd=True)
    with pytest.raises(VOSInputError, match="winograd=True"):
        InferenceEngine(small_method("pcvos"), compile=True, winograd=True)


@pytest.mark.slow
def test_compiled_engine_with_winograd_gives_the_eager_results(monkeypatch):
    # The small TTVOS has no 256-channel convolution: lower the bar so that some are converted.
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 16)
    frames, masks = video(frames=5)
    eager = probabilities(InferenceEngine(small_method("ttvos"), keep_probabilities=True), frames, masks)
    torch._dynamo.reset()
    engine = InferenceEngine(small_method("ttvos"), keep_probabilities=True, compile=True, winograd=True)
    assert engine.winograd_layers, "no convolution converted: the test would not test Winograd"
    compiled = probabilities(engine, frames, masks)
    assert engine.tracking.calls == len(frames) - 1
    # float32 rounding of reordered sums through the recurrent state, as the plain compiled step
    assert (eager - compiled).abs().max() < 1e-3
    assert np.isfinite(compiled.numpy()).all()


@pytest.mark.slow
def test_packaged_step_with_winograd_gives_the_eager_results(monkeypatch, tmp_path):
    # The AOTInductor package (aot_dir) exports the step: Winograd goes into the package, and the
    # key names the converted layers (a package without them is another package).
    import json

    monkeypatch.setattr(winograd, "MIN_CHANNELS", 16)
    frames, masks = video(frames=4)
    eager = probabilities(InferenceEngine(small_method("ttvos"), keep_probabilities=True), frames, masks)
    engine = InferenceEngine(small_method("ttvos"), keep_probabilities=True, compile=True, winograd=True,
                             aot_dir=tmp_path)
    packaged = probabilities(engine, frames, masks)
    (package, how), = engine.tracking.packages.items()
    assert how == "compiled"
    assert json.loads(package.with_suffix(".json").read_text())["winograd"] == engine.winograd_layers != []
    assert (eager - packaged).abs().max() < 1e-3
    # the same weights without Winograd: another key, so another package (not compiled here)
    from vos_models.engine.aot_tracking import PackagedTracking

    frame = torch.zeros(1, 3, 8, 8)
    assert PackagedTracking(small_method("ttvos"), tmp_path / "plain").key(frame, [])["winograd"] == []
    assert engine.tracking.key(frame, [])["winograd"] == engine.winograd_layers
