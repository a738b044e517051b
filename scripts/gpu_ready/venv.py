"""The venv that holds a CUDA build of torch for `make gpu-ready`: found, or created once.

Location: $VOS_GPU_VENV, else ~/.cache/vos-kernels/gpu-venv-<torch version> (outside the clone,
so CI's fresh clones reuse it). torch: $VOS_GPU_TORCH, default DEFAULT_TORCH (the lent GPU
machine's version); pip takes the triton that torch pins (3.6.0 for torch 2.11.0).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .toolchain import ToolchainError

DEFAULT_TORCH = "2.11.0"
# What the build and the probe need besides torch (and the triton it pins).
BUILD_PACKAGES = ("numpy", "ninja", "setuptools", "wheel")


def torch_version() -> str:
    return os.environ.get("VOS_GPU_TORCH") or DEFAULT_TORCH


def venv_dir(version: str) -> Path:
    override = os.environ.get("VOS_GPU_VENV")
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "vos-kernels" / f"gpu-venv-{version}"


def python_of(venv: Path) -> str:
    return str(venv / "bin" / "python")


def installed(python: str) -> dict | None:
    """torch/triton versions and torch's CUDA version in the venv (None when torch is missing)."""
    code = ("import json, torch\n"
            "try:\n    import triton; tv = triton.__version__\nexcept Exception as e:\n    tv = None\n"
            "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'triton': tv}))")
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def matches(found: dict | None, version: str, nvcc_major: int) -> str | None:
    """Why the venv's torch does not fit (None when it does)."""
    if found is None:
        return "torch is not installed in it"
    if found["torch"].split("+")[0] != version:
        return f"it holds torch {found['torch']}, not {version}"
    if found["cuda"] is None:
        return f"its torch {found['torch']} is a CPU build"
    if int(found["cuda"].split(".")[0]) != nvcc_major:
        return f"its torch is built with CUDA {found['cuda']} but nvcc is CUDA {nvcc_major}.x"
    if found["triton"] is None:
        return "triton is not installed in it"
    return None


def ensure(version: str, nvcc_major: int, log=print) -> tuple[str, dict, float]:
    """The venv's python, its versions and the seconds spent creating it (0 when reused)."""
    venv = venv_dir(version)
    python = python_of(venv)
    if Path(python).exists():
        found = installed(python)
        why = matches(found, version, nvcc_major)
        if why is None:
            log(f"venv: reusing {venv} (torch {found['torch']}, triton {found['triton']})")
            return python, found, 0.0
        if found is not None:
            raise ToolchainError(f"venv {venv} does not fit: {why}; remove it or set VOS_GPU_VENV elsewhere")
    started = time.perf_counter()
    log(f"venv: creating {venv} with torch=={version} (a CUDA build, several GB; once per machine)")
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [python, "-m", "pip", "install", "--quiet"]
    proc = subprocess.run(pip + [f"torch=={version}", *BUILD_PACKAGES])
    if proc.returncode != 0:
        raise ToolchainError(f"pip could not install torch=={version} into {venv} (exit {proc.returncode})")
    found = installed(python)
    why = matches(found, version, nvcc_major)
    if why is not None:
        raise ToolchainError(f"the new venv {venv} does not fit: {why} (pip's default torch {version} wheel targets "
                             "another CUDA major: install a matching CUDA toolkit, or point VOS_GPU_VENV at a venv "
                             "with a matching torch)")
    return python, found, time.perf_counter() - started
