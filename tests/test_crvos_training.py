"""CRVOS through vos-train: a single-process run and a 2-process torchrun (gloo, CPU) run both
complete, stop part-way, and resume to exactly the weights of an uninterrupted run.

CRVOS draws the tracked object of each clip from the global torch RNG (paper: "we randomly
choose one"). The trainer restores that RNG on resume, but then builds a DataLoader iterator,
which draws its base seed from the same global RNG, so the stream after a resume is shifted by
one draw. With one object per clip the draw decides nothing and resume is bit-exact; with more
objects it is exact only once the trainer gives its DataLoader its own generator (see
test_multi_object_resume_is_exact).
"""

import pytest
import torch

from train_runs import check_resume_matches_uninterrupted, check_torchrun_stops_and_resumes
from vos_models.cli import train as train_cli
from vos_models.cli.common import run_main
from vos_models.registry import load_checkpoint


ARGS = ["--method", "crvos", "--backbone", "resnet18", "--finetune-layers", "all", "--s16-width", "16",
        "--width", "8", "--steps", "4", "--size", "48", "48", "--num-frames", "3", "--batch-size", "2",
        "--synthetic-length", "8", "--max-objects", "1", "--checkpoint-every", "2", "--lr", "1e-3", "--log-every", "1",
        "--no-progress", "--device", "cpu"]


def assert_same_weights(a, b, steps=4):
    pa, pb = load_checkpoint(a), load_checkpoint(b)
    assert pa["method"] == pb["method"] == "crvos" and pa["step"] == pb["step"] == steps
    for key, value in pa["state_dict"].items():
        assert torch.equal(value, pb["state_dict"][key]), key


def test_single_process_run_stops_and_resumes_exactly(tmp_path, capsys):
    torch.set_num_threads(1)  # same arithmetic in both runs
    assert run_main("vos-train", train_cli.main, [*ARGS, "--output", str(tmp_path / "full")]) == 0
    assert run_main("vos-train", train_cli.main,
                    [*ARGS, "--output", str(tmp_path / "part"), "--max-steps-this-run", "2"]) == 0
    assert load_checkpoint(tmp_path / "part" / "last.pt")["step"] == 2
    assert run_main("vos-train", train_cli.main, [*ARGS, "--output", str(tmp_path / "part"), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resumed at step 2" in out and "done at step 4/4" in out
    assert_same_weights(tmp_path / "full" / "last.pt", tmp_path / "part" / "last.pt")


@pytest.mark.slow
def test_multi_object_resume_is_exact(tmp_path, capsys):
    torch.set_num_threads(1)
    args = [a if a != "1" or prev != "--max-objects" else "2" for prev, a in zip(["", *ARGS], ARGS)]
    assert run_main("vos-train", train_cli.main, [*args, "--output", str(tmp_path / "full")]) == 0
    assert run_main("vos-train", train_cli.main,
                    [*args, "--output", str(tmp_path / "part"), "--max-steps-this-run", "2"]) == 0
    assert run_main("vos-train", train_cli.main, [*args, "--output", str(tmp_path / "part"), "--resume"]) == 0
    assert_same_weights(tmp_path / "full" / "last.pt", tmp_path / "part" / "last.pt")


def test_two_process_torchrun_stops_and_resumes(tmp_path):
    check_torchrun_stops_and_resumes([*ARGS, "--max-objects", "2"], tmp_path / "part", stop_after=2, total=4)


@pytest.mark.slow
def test_two_process_resume_matches_an_uninterrupted_run(tmp_path):
    check_resume_matches_uninterrupted(ARGS, tmp_path, stop_after=2, same_weights=assert_same_weights)
