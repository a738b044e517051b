"""TTVOS through the training engine: a tiny run completes, stops and resumes to the same
weights, single-process and as a 2-process torchrun (DDP, gloo, CPU)."""

import pytest
import torch

from train_runs import check_resume_matches_uninterrupted, check_torchrun_stops_and_resumes
from vos_models.cli import train as train_cli
from vos_models.cli.common import run_main
from vos_models.registry import build_method, load_checkpoint, load_method
from vos_models.training.trainer import seed_everything


# 3-frame clips: the loss backpropagates through one template update per clip.
ARGS = ["--method", "ttvos", "--train-backbone", "last", "--steps", "4", "--size", "32", "32",
        "--batch-size", "1", "--synthetic-length", "8", "--num-frames", "3", "--checkpoint-every", "1",
        "--lr", "1e-3", "--log-every", "1", "--no-progress", "--device", "cpu"]


def _same_weights(a, b):
    pa, pb = load_checkpoint(a), load_checkpoint(b)
    assert pa["method"] == pb["method"] == "ttvos" and pa["step"] == pb["step"] == 4
    for key in pa["state_dict"]:
        assert torch.equal(pa["state_dict"][key], pb["state_dict"][key]), key


def test_single_process_run_stops_and_resumes_exactly(tmp_path, capsys):
    torch.set_num_threads(1)
    assert run_main("vos-train", train_cli.main, [*ARGS, "--output", str(tmp_path / "full")]) == 0
    assert run_main("vos-train", train_cli.main,
                    [*ARGS, "--output", str(tmp_path / "part"), "--max-steps-this-run", "2"]) == 0
    assert load_checkpoint(tmp_path / "part" / "last.pt")["step"] == 2
    assert run_main("vos-train", train_cli.main, [*ARGS, "--output", str(tmp_path / "part"), "--resume"]) == 0
    assert "resumed at step 2" in capsys.readouterr().out
    _same_weights(tmp_path / "full" / "last.pt", tmp_path / "part" / "last.pt")
    trained = load_method(tmp_path / "full" / "last.pt")
    assert trained.name == "ttvos" and trained.train_backbone == "last"
    # The paper's freezing: of the trunk only the s16 stage (layer4) moved.
    seed_everything(0)  # as vos-train does before building the method
    start = build_method("ttvos", train_backbone="last").state_dict()
    after = trained.state_dict()
    moved = {k.split(".")[2] for k in start if k.startswith("trunk.") and not torch.equal(start[k], after[k])}
    assert moved == {"layer4"}
    assert not torch.equal(start["head.decoder.up_s4.weight"], after["head.decoder.up_s4.weight"])


def test_two_process_torchrun_completes_and_resumes(tmp_path):
    check_torchrun_stops_and_resumes(ARGS, tmp_path / "run", stop_after=2, total=4)


@pytest.mark.slow
def test_two_process_resume_matches_an_uninterrupted_run(tmp_path):
    check_resume_matches_uninterrupted(ARGS, tmp_path, stop_after=2, same_weights=_same_weights)
