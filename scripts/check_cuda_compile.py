"""Compile every CUDA source with nvcc for sm_80 and sm_90, without a GPU.

    python scripts/check_cuda_compile.py [FILE.cu ...] [--arch 80 90] [--jobs N]

Compiles against the installed torch's headers (a CPU wheel is enough). The CPU wheel lacks
one generated header, c10/cuda/impl/cuda_cmake_macros.h, which is supplied in a temporary
include folder. Objects are written to a temporary folder and discarded: this proves the
sources build for those targets, not that they run. Exits 1 if any file fails, and 0 with a
notice when nvcc is not installed (there is nothing to check against).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import build_flags  # noqa: E402  (the one definition of our compiler flags)


def _nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and (Path(home) / "bin" / "nvcc").exists():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _command(nvcc: str, source: Path, out_dir: Path, macros_dir: Path, arches: list[str]) -> list[str]:
    import torch
    from torch.utils.cpp_extension import include_paths

    cmd = [nvcc, "-c", str(source), "-o", str(out_dir / (source.stem + ".o")), "-std=c++20",
           *build_flags.nvcc_flags(), "-Xcompiler", "-fPIC", "-DVOS_WITH_CUDA=1",
           f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}", "-I", str(macros_dir), "-I", str(ROOT / "csrc")]
    for path in include_paths():
        cmd += ["-I", path]
    for arch in arches:
        cmd += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    return cmd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", type=Path, help="sources (default: csrc/cuda/*.cu)")
    parser.add_argument("--arch", nargs="+", default=["80", "90"], help="SM versions (default: 80 90)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    nvcc = _nvcc()
    if nvcc is None:
        print("cuda compile check: SKIPPED, nvcc not found (install the CUDA toolkit or set CUDA_HOME)")
        return 0
    files = args.files or sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
    if not files:
        print("cuda compile check: no .cu files")
        return 0
    with tempfile.TemporaryDirectory(prefix="vos_cuda_check_") as tmp:
        tmp = Path(tmp)
        macros = tmp / "include" / "c10" / "cuda" / "impl"
        macros.mkdir(parents=True)
        (macros / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")

        def compile_one(source: Path):
            started = time.perf_counter()
            proc = subprocess.run(_command(nvcc, source, tmp, tmp / "include", args.arch), capture_output=True,
                                  text=True)
            return source, proc, time.perf_counter() - started

        failed = 0
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for source, proc, seconds in pool.map(compile_one, files):
                name = source.relative_to(ROOT) if source.is_absolute() else source
                if proc.returncode == 0:
                    print(f"cuda compile check: OK   {name} (sm_{', sm_'.join(args.arch)}; {seconds:.0f} s)")
                else:
                    failed += 1
                    print(f"cuda compile check: FAIL {name}\n{proc.stderr[-4000:]}")
    print(f"cuda compile check: {len(files) - failed} of {len(files)} files compiled")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
