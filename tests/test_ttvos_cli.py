"""TTVOS end to end through vos-segment / vos-evaluate on the DAVIS sample (tests/davis_cli.py):
blackswan with converted public weights, caps with two objects, the second arriving later."""
import json
import sys

import pytest
import torch

from conftest import require_shared
from davis_cli import check_blackswan, check_caps_second_object_later


@pytest.fixture(scope="module")
def davis():
    return require_shared("data", "davis-sample")


def test_blackswan_with_public_weights(davis, tmp_path, capsys):
    folder = require_shared("parity", "ttvos")
    sys.path.insert(0, str(folder.parent))
    from make_weights import fill
    spec = json.loads((folder / "manifest.json").read_text())
    checkpoint = tmp_path / "ttvos_public.pth.tar"
    torch.save({"epoch": 1, "net": fill(spec["keys"], seed=spec["seed"], gain=spec["gain"])}, checkpoint)
    check_blackswan(davis, tmp_path, capsys, ["--method", "ttvos", "--public-checkpoint", checkpoint])


def test_caps_second_object_arrives_later(davis, tmp_path, capsys):
    check_caps_second_object_later(davis, tmp_path, capsys, ["--method", "ttvos"])
