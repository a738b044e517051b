"""vos-segment over several processes: ``--shard I/N`` and torchrun (RANK / WORLD_SIZE) split a
dataset's sequences; the union of the shards equals one process's results, file for file."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from PIL import Image

from train_runs import run_python
from vos_models import build_method, save_checkpoint
from vos_models.cli import segment as segment_cli
from vos_models.cli.common import run_main
from vos_models.cli.sharding import resolve_shard, shard_argument, shard_sequences
from vos_models.data import read_mask, write_mask
from vos_models.errors import VOSInputError

SEQUENCES = ["alpha", "beta", "gamma"]


@pytest.fixture
def dataset(tmp_path):
    """A DAVIS-layout root with three 3-frame sequences (32x48), and a tiny-prop checkpoint (the
    same weights in every process)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "davis"
    for number, seq in enumerate(SEQUENCES):
        images, annotations = root / "JPEGImages" / "480p" / seq, root / "Annotations" / "480p" / seq
        images.mkdir(parents=True)
        annotations.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(images / f"{i:05d}.jpg")
        labels = np.zeros((32, 48), np.uint8)
        labels[4 + number:20, 6:30] = 1
        labels[22:30, 30:44] = 2
        write_mask(annotations / "00000.png", labels)
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "tiny.pt", build_method("tiny-prop", channels=4))
    return root, checkpoint


def _args(root, checkpoint, output):
    return ["--davis", str(root), "--output", str(output), "--checkpoint", str(checkpoint), "--device", "cpu",
            "--no-progress"]


def _results(output) -> dict:
    return {str(p.relative_to(output)): read_mask(p) for p in sorted(output.rglob("*.png"))}


def _assert_same(one: dict, other: dict) -> None:
    assert sorted(one) == sorted(other) and len(one) == 3 * len(SEQUENCES)
    for name in one:
        assert np.array_equal(one[name], other[name]), name   # the same CPU code on the same input


def test_shards_by_hand_equal_one_process(dataset, tmp_path, capsys):
    root, checkpoint = dataset
    assert run_main("vos-segment", segment_cli.main, _args(root, checkpoint, tmp_path / "one")) == 0
    capsys.readouterr()
    for index in range(2):
        argv = _args(root, checkpoint, tmp_path / "shards") + ["--shard", f"{index}/2"]
        assert run_main("vos-segment", segment_cli.main, argv) == 0
        done = [line.split(":")[0] for line in capsys.readouterr().out.splitlines()]
        assert done == SEQUENCES[index::2]
    _assert_same(_results(tmp_path / "one"), _results(tmp_path / "shards"))


def test_torchrun_with_two_cpu_processes_equals_one_process(dataset, tmp_path):
    root, checkpoint = dataset
    one = run_python(["-m", "vos_models.cli.segment", *_args(root, checkpoint, tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-2000:]
    two = run_python(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                      "-m", "vos_models.cli.segment", *_args(root, checkpoint, tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-2000:]
    assert sorted(line.split(":")[0] for line in two.stdout.splitlines() if ": 3 frames" in line) == SEQUENCES
    _assert_same(_results(tmp_path / "one"), _results(tmp_path / "two"))


def test_shard_arguments_and_environment():
    assert shard_argument("1/4") == (1, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected I/N with 0 <= I < N"):
            shard_argument(bad)
    assert resolve_shard(None, {}) == (0, 1)
    assert resolve_shard((1, 3), {}) == (1, 3)
    assert resolve_shard(None, {"RANK": "2", "WORLD_SIZE": "3"}) == (2, 3)
    assert resolve_shard(None, {"RANK": "0", "WORLD_SIZE": "1"}) == (0, 1)
    with pytest.raises(VOSInputError, match="torchrun already splits the sequences"):
        resolve_shard((0, 2), {"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(VOSInputError, match="expected 0 <= RANK < WORLD_SIZE"):
        resolve_shard(None, {"RANK": "5", "WORLD_SIZE": "2"})
    assert shard_sequences(["a", "b", "c", "d", "e"], (1, 2)) == ["b", "d"]
    assert shard_sequences(["a"], (1, 2)) == []


def test_shard_with_one_video_is_refused(dataset, tmp_path, capsys):
    root, checkpoint = dataset
    argv = ["--input", str(root / "JPEGImages" / "480p" / "alpha"), "--mask",
            str(root / "Annotations" / "480p" / "alpha" / "00000.png"), "--output", str(tmp_path / "out"),
            "--method", "copy-previous", "--shard", "0/2", "--no-progress"]
    assert run_main("vos-segment", segment_cli.main, argv) == 1
    assert "--shard (or torchrun) splits the sequences of --davis" in capsys.readouterr().err
