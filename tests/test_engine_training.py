"""The training engine: schedules, a run killed mid-epoch resumes to the same weights, and a
2-process torchrun (DDP, gloo, CPU) run completes and resumes."""
import json
import os

import pytest
import torch

from train_runs import run_python, torchrun_train
from vos_models.cli import train as train_cli
from vos_models.cli.common import run_main
from vos_models.registry import load_checkpoint
from vos_models.training.trainer import TrainConfig, lr_factor


TRAIN_ARGS = ["--method", "tiny-prop", "--set", "channels=4", "--steps", "6", "--size", "24", "24",
              "--batch-size", "2", "--synthetic-length", "8", "--num-frames", "3", "--checkpoint-every", "2",
              "--lr", "1e-2", "--schedule", "cosine", "--log-every", "1", "--no-progress", "--device", "cpu"]

KILLER = """
import os, signal, sys
from vos_models.cli import train
def kill_after_step_3(trainer, step):
    if step == 3:  # after step 3: the last checkpoint is step 2's, mid-epoch (4 batches per epoch)
        os.kill(os.getpid(), signal.SIGKILL)
sys.exit(train.main(sys.argv[1:], callbacks=[kill_after_step_3]))
"""


def assert_same_training_state(a, b):
    pa, pb = load_checkpoint(a), load_checkpoint(b)
    assert pa["step"] == pb["step"] == 6 and pa["epoch"] == pb["epoch"] == 1
    for key in pa["state_dict"]:
        assert torch.equal(pa["state_dict"][key], pb["state_dict"][key]), key
    for i, state in pa["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg"], pb["optimizer"]["state"][i]["exp_avg"])
    assert pa["scheduler"]["last_epoch"] == pb["scheduler"]["last_epoch"] == 6


def test_lr_schedules():
    config = TrainConfig(output="x", steps=100, schedule="cosine", warmup_steps=10)
    assert lr_factor(config, 0) == pytest.approx(0.1) and lr_factor(config, 9) == pytest.approx(1.0)
    assert lr_factor(config, 10) == pytest.approx(1.0) and lr_factor(config, 55) == pytest.approx(0.5)
    step = TrainConfig(output="x", steps=100, schedule="step", milestones=(30, 60), gamma=0.1)
    assert [lr_factor(step, s) for s in (0, 30, 59, 60)] == pytest.approx([1, 0.1, 0.1, 0.01])
    poly = TrainConfig(output="x", steps=100, schedule="poly", poly_power=1.0)
    assert lr_factor(poly, 50) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="schedule must be one of"):
        TrainConfig(output="x", schedule="linear").validate()


def test_killed_run_resumes_to_the_same_weights(tmp_path, capsys):
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1): identical arithmetic
    assert run_main("vos-train", train_cli.main, [*TRAIN_ARGS, "--output", str(tmp_path / "ref")]) == 0
    killed = run_python(["-c", KILLER, *TRAIN_ARGS, "--output", str(tmp_path / "run")])
    assert killed.returncode == -9, killed.stderr  # really killed, not a clean exit
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 2
    assert not [p for p in os.listdir(tmp_path / "run") if p.endswith(".tmp")]
    assert run_main("vos-train", train_cli.main, [*TRAIN_ARGS, "--output", str(tmp_path / "run")]) == 1
    assert "pass --resume" in capsys.readouterr().err
    resumed = run_python(["-m", "vos_models.cli.train", *TRAIN_ARGS, "--output", str(tmp_path / "run"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step 2" in resumed.stdout
    assert_same_training_state(tmp_path / "ref" / "last.pt", tmp_path / "run" / "last.pt")
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # the killed run's step 3 line was dropped on resume
    # the trained checkpoint segments through the inference side
    from vos_models import load_method
    assert load_method(tmp_path / "run" / "last.pt").name == "tiny-prop"


DDP_ARGS = [a if a != "8" else "16" for a in TRAIN_ARGS]  # 16 clips: 4 batches of 2 per process per epoch


def test_two_process_torchrun_completes_and_averages_gradients(tmp_path):
    full = torchrun_train([*DDP_ARGS, "--output", str(tmp_path / "full")])
    assert "2 process(es)" in full.stdout and "done at step 6/6" in full.stdout
    payload = load_checkpoint(tmp_path / "full" / "last.pt")
    assert payload["world_size"] == 2 and len(payload["rng"]) == 2 and payload["step"] == 6
    # 2 processes x batch 2 see, per step, the same 4 clips as 1 process x batch 4 (rank r takes
    # every 2nd index of the epoch's order), and DDP averages the gradients: same training.
    torch.set_num_threads(1)
    single_args = DDP_ARGS[:DDP_ARGS.index("--batch-size")] + ["--batch-size", "4"] + \
        DDP_ARGS[DDP_ARGS.index("--batch-size") + 2:]
    assert run_main("vos-train", train_cli.main, [*single_args, "--output", str(tmp_path / "single")]) == 0
    single = load_checkpoint(tmp_path / "single" / "last.pt")["state_dict"]
    for key, value in payload["state_dict"].items():
        assert torch.allclose(value, single[key], atol=1e-5, rtol=1e-4), key


@pytest.mark.slow
def test_two_process_run_stopped_mid_epoch_resumes_exactly(tmp_path):
    torchrun_train([*DDP_ARGS, "--output", str(tmp_path / "full")])
    torchrun_train([*DDP_ARGS, "--output", str(tmp_path / "part"), "--max-steps-this-run", "3"])
    assert load_checkpoint(tmp_path / "part" / "last.pt")["batch_in_epoch"] == 3  # mid-epoch (of 4)
    rest = torchrun_train([*DDP_ARGS, "--output", str(tmp_path / "part"), "--resume"])
    assert "resumed at step 3" in rest.stdout
    assert_same_training_state(tmp_path / "full" / "last.pt", tmp_path / "part" / "last.pt")


def test_resuming_with_another_process_count_is_refused(tmp_path, capsys):
    torch.set_num_threads(1)
    args = [*TRAIN_ARGS, "--output", str(tmp_path / "run")]
    assert run_main("vos-train", train_cli.main, [*args, "--max-steps-this-run", "2"]) == 0
    payload = load_checkpoint(tmp_path / "run" / "last.pt")
    payload["world_size"] = 2
    torch.save(payload, tmp_path / "run" / "last.pt")
    assert run_main("vos-train", train_cli.main, [*args, "--resume"]) == 1
    assert "same number" in capsys.readouterr().err


def test_sigterm_checkpoints_and_stops(tmp_path, capsys):
    import signal

    torch.set_num_threads(1)

    def terminate_at_step_2(trainer, step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    args = [*TRAIN_ARGS, "--output", str(tmp_path / "run"), "--checkpoint-every", "100"]
    assert train_cli.main(args, callbacks=[terminate_at_step_2]) == 0
    assert "stopped at step 3/6" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 3


def test_validation_amp_and_video_data_paths(tmp_path):
    from tests.conftest import require_shared

    torch.set_num_threads(1)
    args = [*TRAIN_ARGS, "--output", str(tmp_path / "val"), "--steps", "2", "--val-every", "2",
            "--amp", "bfloat16"]
    assert train_cli.main(args) == 0
    records = [json.loads(line) for line in (tmp_path / "val" / "log.jsonl").read_text().splitlines()]
    val = [r for r in records if "val_J&F-Mean" in r]
    assert len(val) == 1 and 0.0 <= val[0]["val_J&F-Mean"] <= 1.0 and val[0]["step"] == 2
    davis = require_shared("data", "davis-sample")
    args = [*TRAIN_ARGS, "--output", str(tmp_path / "davis"), "--steps", "1", "--data", str(davis),
            "--sequences", "blackswan,dog", "--size", "32", "32"]
    assert train_cli.main(args) == 0
    assert load_checkpoint(tmp_path / "davis" / "last.pt")["step"] == 1
