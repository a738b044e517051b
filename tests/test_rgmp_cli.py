"""RGMP through the command lines: vos-segment on blackswan (public-format and our checkpoints),
vos-train for both stages, single-process and 2-process torchrun, interrupted and resumed.

Tiny non-paper configurations keep this cheap; the paper model is covered by the parity test.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, require_shared

from vos_models import build_method, save_checkpoint
from vos_models.cli import segment as segment_cli
from vos_models.cli import train as train_cli
from vos_models.cli.common import run_main
from vos_models.data import read_mask
from vos_models.methods.rgmp.convert import DROPPED_PUBLIC_KEYS, to_public_state_dict
from vos_models.registry import load_checkpoint

TINY = ["--backbone", "resnet18", "--decoder-channels", "8"]
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
    ENV.pop(key, None)


def blackswan_excerpt(tmp_path, frames=3):
    davis = require_shared("data", "davis-sample")
    source = davis / "JPEGImages" / "480p" / "blackswan"
    folder = tmp_path / "blackswan"
    folder.mkdir()
    for path in sorted(source.glob("*.jpg"))[:frames]:
        shutil.copy(path, folder / path.name)
    return folder, davis / "Annotations" / "480p" / "blackswan" / "00000.png"


def segment(argv):
    return run_main("vos-segment", segment_cli.main, [str(a) for a in argv] + ["--no-progress"])


def test_segment_blackswan_with_public_and_own_checkpoints(tmp_path, capsys):
    torch.manual_seed(0)
    frames, first_mask = blackswan_excerpt(tmp_path)
    model = build_method("rgmp", backbone="resnet18", decoder_channels=8)
    public = to_public_state_dict(model.state_dict())
    public.update({"module." + key: torch.zeros(1) for key in DROPPED_PUBLIC_KEYS})
    torch.save(public, tmp_path / "public.pth")
    save_checkpoint(tmp_path / "ours.pt", model)

    rc = segment(["--input", frames, "--mask", first_mask, "--output", tmp_path / "a", "--method", "rgmp",
                  "--public-checkpoint", tmp_path / "public.pth", *TINY, "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    assert "blackswan: 3 frames, 1 object(s)" in capsys.readouterr().out
    # Our checkpoint, multi-scale, torch resizer: same weights, another inference setting.
    rc = segment(["--input", frames, "--mask", first_mask, "--output", tmp_path / "b", "--method", "rgmp",
                  "--checkpoint", tmp_path / "ours.pt", "--scales", "paper", "--resizer", "torch", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    given = read_mask(first_mask)
    for folder in ("a", "b"):
        outputs = sorted((tmp_path / folder / "blackswan").glob("*.png"))
        assert [p.name for p in outputs] == ["00000.png", "00001.png", "00002.png"]
        assert np.array_equal(read_mask(outputs[0]), given)
        assert set(np.unique(read_mask(outputs[2]))) <= {0, 1}

    # A public checkpoint of another shape is refused in one line, leaving nothing behind.
    rc = segment(["--input", frames, "--mask", first_mask, "--output", tmp_path / "c", "--method", "rgmp",
                  "--public-checkpoint", tmp_path / "public.pth", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "does not fit RGMP" in err and "misshaped" in err
    assert not (tmp_path / "c" / "blackswan").exists()


TRAIN = ["--method", "rgmp", *TINY, "--size", "32", "32", "--batch-size", "2", "--synthetic-length", "8",
         "--num-frames", "3", "--steps", "4", "--checkpoint-every", "2", "--log-every", "1", "--lr", "1e-3",
         "--no-progress", "--device", "cpu"]


def train(args):
    return run_main("vos-train", train_cli.main, [str(a) for a in args])


def test_train_both_stages_complete_and_resume(tmp_path):
    torch.set_num_threads(1)
    for stage in ("pretrain", "finetune"):
        args = [*TRAIN, "--train-stage", stage, "--output", tmp_path / stage]
        assert train([*args, "--max-steps-this-run", "2"]) == 0
        assert load_checkpoint(tmp_path / stage / "last.pt")["step"] == 2
        assert train([*args, "--resume"]) == 0
        payload = load_checkpoint(tmp_path / stage / "last.pt")
        assert payload["step"] == 4 and payload["config"]["train_stage"] == stage
        logged = [json.loads(line) for line in (tmp_path / stage / "log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3, 4]
        assert all(np.isfinite(r["loss"]) for r in logged if "loss" in r)
    # Stage 2 starts from stage 1's weights, as in the paper.
    assert train([*TRAIN, "--train-stage", "finetune", "--output", tmp_path / "two_stage",
                  "--init-checkpoint", tmp_path / "pretrain" / "last.pt"]) == 0
    assert load_checkpoint(tmp_path / "two_stage" / "last.pt")["config"]["train_stage"] == "finetune"


def test_train_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    torch.set_num_threads(1)
    args = [*TRAIN, "--train-stage", "pretrain"]
    assert train([*args, "--output", tmp_path / "full"]) == 0
    assert train([*args, "--output", tmp_path / "part", "--max-steps-this-run", "2"]) == 0
    assert train([*args, "--output", tmp_path / "part", "--resume"]) == 0
    full, part = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "part" / "last.pt")
    for key, value in full["state_dict"].items():
        assert torch.equal(value, part["state_dict"][key]), key


def torchrun(args):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "vos_models.cli.train", *[str(a) for a in args]],
                          capture_output=True, text=True, env=ENV, timeout=600)


def test_two_process_torchrun_completes_and_resumes(tmp_path):
    args = [*TRAIN, "--output", tmp_path / "run"]
    part = torchrun([*args, "--max-steps-this-run", "2"])
    assert part.returncode == 0, part.stderr[-3000:]
    assert "2 process(es)" in part.stdout and "stopped at step 2/4" in part.stdout
    rest = torchrun([*args, "--resume"])
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert "resumed at step 2" in rest.stdout and "done at step 4/4" in rest.stdout
    payload = load_checkpoint(tmp_path / "run" / "last.pt")
    assert payload["world_size"] == 2 and payload["step"] == 4
    assert all(torch.isfinite(v).all() for v in payload["state_dict"].values() if v.is_floating_point())
