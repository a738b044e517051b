"""PCVOS end to end through vos-segment / vos-evaluate on the DAVIS sample (short excerpts at full
resolution, a light configuration with random weights so that it takes seconds): blackswan with one
object, caps with two objects, the second first annotated on a later frame. 854 and 853 are not
multiples of 16, so the padding path runs; the clips (length 2) split the excerpts unevenly."""
import pytest

from conftest import require_shared
from davis_cli import check_blackswan, check_caps_second_object_later

LIGHT = ["--method", "pcvos", "--key-backbone", "resnet18", "--set", "key_dim=16", "--set", "value_dim=32",
         "--set", "icr_dim=16", "--set", "decoder_dim=16", "--clip-length", "2", "--device", "cpu"]
pytestmark = pytest.mark.filterwarnings("ignore:pcvos. no --checkpoint:UserWarning")  # random weights on purpose


@pytest.fixture(scope="module")
def davis():
    return require_shared("data", "davis-sample")


def test_blackswan_end_to_end(davis, tmp_path, capsys):
    check_blackswan(davis, tmp_path, capsys, LIGHT)


def test_caps_second_object_arrives_later(davis, tmp_path, capsys):
    check_caps_second_object_later(davis, tmp_path, capsys, LIGHT)
