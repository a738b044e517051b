"""PCVOS through the training engine: a single-process run interrupted and resumed ends where an
uninterrupted run ends, and a 2-process torchrun (DDP, gloo, CPU) run completes and resumes."""
import os
import subprocess
import sys

import torch

from tests.conftest import REPO_ROOT
from vos_models.cli import train as train_cli
from vos_models.cli.common import run_main
from vos_models.registry import load_checkpoint

ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
    ENV.pop(key, None)

ARGS = ["--method", "pcvos", "--key-backbone", "resnet18", "--set", "key_dim=8", "--set", "value_dim=16",
        "--set", "icr_dim=8", "--set", "decoder_dim=8", "--clip-length", "2", "--steps", "3",
        "--size", "32", "32", "--num-frames", "3", "--batch-size", "1", "--synthetic-length", "4",
        "--checkpoint-every", "1", "--log-every", "1", "--lr", "1e-3", "--no-progress", "--device", "cpu"]


def same_weights(a, b):
    pa, pb = load_checkpoint(a), load_checkpoint(b)
    assert pa["step"] == pb["step"] == 3
    assert pa["state_dict"]["_extra_state"] == pb["state_dict"]["_extra_state"] == {"iteration": 3}
    for key, value in pa["state_dict"].items():
        if key != "_extra_state":
            assert torch.allclose(value, pb["state_dict"][key], atol=1e-6, rtol=1e-5), key


def test_pcvos_training_resumes_to_the_same_weights(tmp_path):
    torch.set_num_threads(1)
    assert run_main("vos-train", train_cli.main, [*ARGS, "--output", str(tmp_path / "full")]) == 0
    assert run_main("vos-train", train_cli.main, [*ARGS, "--output", str(tmp_path / "part"),
                                                  "--max-steps-this-run", "2"]) == 0
    assert load_checkpoint(tmp_path / "part" / "last.pt")["step"] == 2
    assert run_main("vos-train", train_cli.main, [*ARGS, "--output", str(tmp_path / "part"), "--resume"]) == 0
    same_weights(tmp_path / "full" / "last.pt", tmp_path / "part" / "last.pt")


def torchrun(args):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "vos_models.cli.train", *args], capture_output=True, text=True, env=ENV, timeout=600)


def test_pcvos_two_process_torchrun_completes_and_resumes(tmp_path):
    part = torchrun([*ARGS, "--output", str(tmp_path / "part"), "--max-steps-this-run", "2"])
    assert part.returncode == 0, part.stderr[-3000:]
    assert "2 process(es)" in part.stdout and "stopped at step 2/3" in part.stdout
    rest = torchrun([*ARGS, "--output", str(tmp_path / "part"), "--resume"])
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert "resumed at step 2" in rest.stdout and "done at step 3/3" in rest.stdout
    payload = load_checkpoint(tmp_path / "part" / "last.pt")
    assert payload["world_size"] == 2 and payload["state_dict"]["_extra_state"] == {"iteration": 3}
