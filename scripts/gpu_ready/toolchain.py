"""Where nvcc, the CUDA toolkit and cuobjdump are, and which CUDA version nvcc is."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path


class ToolchainError(RuntimeError):
    """A tool that gpu-ready needs is missing or unusable (the message says which and why)."""


def find_nvcc() -> str | None:
    """nvcc of $CUDA_HOME, else the one on PATH (None when there is none)."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and (Path(home) / "bin" / "nvcc").exists():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def cuda_home(nvcc: str) -> str:
    """The toolkit folder (with include/cuda_runtime.h) that `nvcc` belongs to.

    Set explicitly for the build: nvcc on PATH may be a wrapper script (e.g. /usr/local/bin/nvcc),
    from which torch would guess CUDA_HOME=/usr/local, a folder without the CUDA headers.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                  str(Path(os.path.realpath(nvcc)).parents[1]), "/usr/local/cuda"]
    for home in candidates:
        if home and (Path(home) / "include" / "cuda_runtime.h").exists() and (Path(home) / "bin" / "nvcc").exists():
            return home
    raise ToolchainError(f"no CUDA toolkit with include/cuda_runtime.h found for {nvcc} (set CUDA_HOME)")


def parse_cuda_release(version_text: str) -> tuple[int, int]:
    """(major, minor) from `nvcc --version` / `cuobjdump --version` text ("release 13.0, V13.0.88")."""
    match = re.search(r"release (\d+)\.(\d+)", version_text)
    if not match:
        raise ToolchainError(f"cannot read a CUDA release from {version_text!r}")
    return int(match.group(1)), int(match.group(2))


def tool_release(tool: str) -> tuple[int, int]:
    proc = subprocess.run([tool, "--version"], capture_output=True, text=True)
    return parse_cuda_release(proc.stdout + proc.stderr)


def find_cuobjdump(cuda_home_dir: str, venv_python: str | None) -> str:
    """cuobjdump of the toolkit, else on PATH, else the copy that triton ships in the venv."""
    candidates = [str(Path(cuda_home_dir) / "bin" / "cuobjdump"), shutil.which("cuobjdump")]
    if venv_python:
        site = subprocess.run([venv_python, "-c", "import triton, os; print(os.path.dirname(triton.__file__))"],
                              capture_output=True, text=True)
        if site.returncode == 0:
            candidates.append(os.path.join(site.stdout.strip(), "backends", "nvidia", "bin", "cuobjdump"))
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    raise ToolchainError("cuobjdump not found (looked in $CUDA_HOME/bin, PATH and triton's backends/nvidia/bin); "
                         "install the CUDA toolkit's cuobjdump")
