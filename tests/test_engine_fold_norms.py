"""Folding frozen batch norms into convolutions (vos_models.engine.folding): each of the four
methods folds its conv -> norm pairs, keeps its results (float32 rounding only), leaves the
method given untouched, and a wrong fold is caught rather than run."""
import pytest
import torch
from torch import nn

from tests.test_engine_fast_paths import SMALL, probabilities, small_method, video, video_folder
from vos_models.backbones.frozen_bn import FrozenBatchNorm2d
from vos_models.engine.folding import FOLD_ATOL, _fold_pair, fold_batch_norms
from vos_models.engine.inference import InferenceEngine
from vos_models.errors import VOSInputError

torch.set_num_threads(1)


def _norm_count(module: nn.Module) -> int:
    return sum(1 for m in module.modules() if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)))


def test_fold_pair_matches_conv_then_norm_exactly_up_to_rounding():
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, 3, padding=1, groups=1, bias=True).double()
    norm = FrozenBatchNorm2d(7, eps=1e-3).double()
    norm.weight.uniform_(0.5, 2.0), norm.bias.normal_(), norm.running_mean.normal_(), norm.running_var.uniform_(0.1, 3)
    x = torch.randn(2, 5, 9, 11, dtype=torch.float64)
    expected = norm(conv(x))
    _fold_pair(conv, norm)
    # float64 throughout: only reassociation rounding remains.
    torch.testing.assert_close(conv(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_engine_fold_norms_gives_the_plain_results(name):
    method = small_method(name)
    norms_before = _norm_count(method)
    frames, masks = video()
    plain = probabilities(InferenceEngine(method, keep_probabilities=True), frames, masks)
    engine = InferenceEngine(method, keep_probabilities=True, fold_norms=True)
    report = engine.fold_report
    assert report.folded > 0, f"{name}: no conv -> norm pair was folded"
    assert report.folded <= report.norms == norms_before
    assert _norm_count(engine.method) == norms_before - report.folded
    assert _norm_count(method) == norms_before, "the method given must stay unfolded"
    folded = probabilities(engine, frames, masks)
    # Folding reassociates (W * x) * s into (W s) * x in float32: rounding of a few ulps per
    # layer, far below FOLD_ATOL on probabilities.
    torch.testing.assert_close(folded, plain, rtol=0, atol=FOLD_ATOL)


class _ResidualUse(nn.Module):
    """conv's output feeds the norm *and* a residual: folding the pair would change the residual."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv
        self.norm = FrozenBatchNorm2d(conv.out_channels)
        with torch.no_grad():
            self.norm.weight.fill_(3.0)
            self.norm.running_mean.fill_(0.5)

    def forward(self, x):
        y = self.conv(x)
        return self.norm(y) + y


def test_a_fold_that_changes_results_is_refused():
    method = small_method("rgmp").eval()
    # Wrap the method's first convolution so that its output also feeds a residual.
    name, first = next((n, m) for n, m in method.named_modules() if isinstance(m, nn.Conv2d))
    parent, _, child = name.rpartition(".")
    setattr(method.get_submodule(parent) if parent else method, child, _ResidualUse(first))
    with pytest.raises(RuntimeError, match="differs from the original"):
        fold_batch_norms(method)


def test_fold_needs_eval_mode():
    with pytest.raises(VOSInputError, match="eval mode"):
        fold_batch_norms(small_method("rgmp").train())


def test_vos_segment_fold_norms_flag_warns_when_nothing_folds(tmp_path):
    from vos_models.cli import segment as segment_cli
    from vos_models.cli.common import run_main

    folder, mask = video_folder(tmp_path, frames=3)
    # tiny-prop has no batch norm: the flag is accepted, and says that it folded nothing.
    with pytest.warns(UserWarning, match="no convolution -> frozen batch norm pair"):
        status = run_main("vos-segment", segment_cli.main,
                          ["--input", str(folder), "--mask", str(mask), "--method", "tiny-prop", "--set", "channels=4",
                           "--no-progress", "--output", str(tmp_path / "out"), "--fold-norms", "--threads", "1"])
    assert status == 0 and len(list((tmp_path / "out" / "frames").glob("*.png"))) == 3


def test_fold_works_inside_inference_mode():
    # the probe pairs norms by tensor version counters, which inference tensors lack: the fold
    # leaves inference mode for its probe instead of failing
    with torch.inference_mode():
        _, report = fold_batch_norms(small_method("crvos").eval())
    assert report.folded == report.norms > 0
