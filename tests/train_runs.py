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
