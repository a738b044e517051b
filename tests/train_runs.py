"""vos-train in subprocesses for the training tests: one process, or torchrun with two CPU
processes, in a clean environment (no inherited RANK/WORLD_SIZE, one OpenMP thread each)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
for _key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
    ENV.pop(_key, None)


def run_python(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=ENV, timeout=timeout)


def torchrun_train(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node 2 -m vos_models.cli.train ARGS`; asserts exit 0."""
    done = run_python(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                       "-m", "vos_models.cli.train", *args], timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def stopped_and_resumed(args: list[str], output: Path, stop_after: int, **resume_extra) -> tuple:
    """Two torchrun runs into `output`: the first stops after `stop_after` steps, the second
    resumes to the end. Returns both CompletedProcesses."""
    part = torchrun_train([*args, "--output", str(output), "--max-steps-this-run", str(stop_after)])
    rest = torchrun_train([*args, "--output", str(output), "--resume"])
    return part, rest


def check_torchrun_stops_and_resumes(args: list[str], output: Path, stop_after: int, total: int):
    """Two processes stop after `stop_after` of `total` steps and resume to the end: the logs
    say so and the last checkpoint records both processes and every step. Returns (part, rest)."""
    from vos_models.registry import load_checkpoint

    part, rest = stopped_and_resumed(args, output, stop_after)
    assert "2 process(es)" in part.stdout and f"stopped at step {stop_after}/{total}" in part.stdout
    assert f"resumed at step {stop_after}" in rest.stdout and f"done at step {total}/{total}" in rest.stdout
    payload = load_checkpoint(output / "last.pt")
    assert payload["world_size"] == 2 and payload["step"] == total
    return part, rest


def check_resume_matches_uninterrupted(args: list[str], tmp: Path, stop_after: int, same_weights) -> None:
    """A two-process run stopped after `stop_after` steps and resumed ends with the weights of an
    uninterrupted one; same_weights(path_a, path_b) asserts it."""
    torchrun_train([*args, "--output", str(tmp / "full")])
    stopped_and_resumed(args, tmp / "part", stop_after)
    same_weights(tmp / "full" / "last.pt", tmp / "part" / "last.pt")
