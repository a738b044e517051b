"""PCVOS end to end through vos-segment / vos-evaluate on the DAVIS sample (short excerpts at full
resolution, a light configuration with random weights so that it takes seconds): blackswan with one
object, caps with two objects, the second first annotated on a later frame. 854 and 853 are not
multiples of 16, so the padding path runs; the clips (length 2) split the excerpts unevenly."""
import numpy as np
import pytest

from conftest import require_shared
from test_ttvos_cli import excerpt, segment
from vos_models.cli import evaluate as evaluate_cli
from vos_models.cli.common import run_main
from vos_models.data import read_mask

LIGHT = ["--method", "pcvos", "--key-backbone", "resnet18", "--set", "key_dim=16", "--set", "value_dim=32",
         "--set", "icr_dim=16", "--set", "decoder_dim=16", "--clip-length", "2", "--device", "cpu"]
pytestmark = pytest.mark.filterwarnings("ignore:pcvos. no --checkpoint:UserWarning")  # random weights on purpose


@pytest.fixture(scope="module")
def davis():
    return require_shared("data", "davis-sample")


def test_blackswan_end_to_end(davis, tmp_path, capsys):
    names = [f"{i:05d}" for i in range(3)]
    images, annotations = excerpt(davis, "blackswan", names, names, tmp_path / "davis")
    out = tmp_path / "results"
    assert segment(["--input", images, "--mask", annotations / "00000.png", "--output", out, *LIGHT]) == 0
    assert "blackswan: 3 frames, 1 object(s)" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "blackswan").glob("*.png")) == [f"{n}.png" for n in names]
    assert np.array_equal(read_mask(out / "blackswan" / "00000.png"), read_mask(annotations / "00000.png"))
    predicted = read_mask(out / "blackswan" / "00002.png")
    assert predicted.shape == (480, 854) and set(np.unique(predicted)) <= {0, 1}
    assert run_main("vos-evaluate", evaluate_cli.main, ["--gt", str(tmp_path / "davis"), "--pred", str(out)]) == 0
    assert "blackswan_1" in capsys.readouterr().out


def test_caps_second_object_arrives_later(davis, tmp_path, capsys):
    frames = ["00000", "00014", "00033", "00034"]
    images, annotations = excerpt(davis, "caps", frames, ["00000", "00033"], tmp_path / "davis")
    assert set(np.unique(read_mask(annotations / "00000.png"))) == {0, 1}
    out = tmp_path / "results"
    assert segment(["--input", images, "--masks", annotations, "--output", out, *LIGHT]) == 0
    assert "caps: 4 frames, 2 object(s)" in capsys.readouterr().out
    given = read_mask(annotations / "00033.png")
    arrived = read_mask(out / "caps" / "00033.png")
    assert arrived.shape == (853, 480)
    assert np.array_equal(arrived == 2, given == 2)  # the new object's mask is taken as given
    assert np.array_equal(read_mask(out / "caps" / "00000.png"), read_mask(annotations / "00000.png"))
    assert set(np.unique(read_mask(out / "caps" / "00014.png"))) <= {0, 1}  # object 2 not yet known
    later = read_mask(out / "caps" / "00034.png")
    assert later.shape == (853, 480) and set(np.unique(later)) <= {0, 1, 2}
    assert run_main("vos-evaluate", evaluate_cli.main, ["--gt", str(tmp_path / "davis"), "--pred", str(out)]) == 0
    report = capsys.readouterr().out
    assert "caps_1" in report and "caps_2" in report
