"""Compile every CUDA source with nvcc for sm_80 and sm_90, without a GPU.

    python scripts/check_cuda_compile.py [FILE.cu ...] [--arch-list "8.0;9.0+PTX"] [--jobs N]

Compiles against the installed torch's headers (a CPU wheel is enough), with the flags of the
real build: scripts/build_flags.py's nvcc flags (including the -std of the installed torch) and
-gencode flags, torch's COMMON_NVCC_FLAGS and the macros that cpp_extension defines. The CPU wheel lacks
one generated header, c10/cuda/impl/cuda_cmake_macros.h, which is supplied in a temporary
include folder. Objects are written to a temporary folder and discarded: this proves the
sources build for those targets, not that they run. Exits 1 if any file fails, and 0 with a
notice when nvcc is not installed (there is nothing to check against).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
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


def command(nvcc: str, source: Path, out_dir: Path, macros_dir: Path, arch_list: str) -> list[str]:
    """The nvcc command line of one source: what setup.py's CUDAExtension runs, minus ninja's -MD."""
    import torch
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths

    macros = [("TORCH_API_INCLUDE_EXTENSION_H", None), ("TORCH_EXTENSION_NAME", "_C"),
              ("_GLIBCXX_USE_CXX11_ABI", str(int(torch._C._GLIBCXX_USE_CXX11_ABI))), *build_flags.cuda_define_macros()]
    cmd = [nvcc, "-c", str(source), "-o", str(out_dir / (source.stem + ".o")), *COMMON_NVCC_FLAGS,
           "--compiler-options", "-fPIC", *build_flags.nvcc_flags(), *build_flags.cuda_arch_flags(arch_list)]
    cmd += [f"-D{name}" if value is None else f"-D{name}={value}" for name, value in macros]
    cmd += ["-I", str(macros_dir), "-I", str(ROOT / "csrc")]
    for path in include_paths():
        cmd += ["-I", path]
    return cmd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", type=Path, help="sources (default: csrc/cuda/*.cu)")
    parser.add_argument("--arch-list", default=build_flags.GPU_READY_ARCH_LIST,
                        help=f"TORCH_CUDA_ARCH_LIST syntax (default: {build_flags.GPU_READY_ARCH_LIST})")
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
            proc = subprocess.run(command(nvcc, source, tmp, tmp / "include", args.arch_list), capture_output=True,
                                  text=True)
            return source, proc, time.perf_counter() - started

        failed = 0
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for source, proc, seconds in pool.map(compile_one, files):
                name = os.path.relpath(source, ROOT)
                if proc.returncode == 0:
                    warnings = [line for line in proc.stderr.splitlines() if re.search(r"(:|\)):? warning\b", line)]
                    print(f"cuda compile check: OK   {name} ({args.arch_list}; {seconds:.0f} s"
                          f"{f'; {len(warnings)} warnings' if warnings else ''})")
                    for line in sorted(set(warnings)):
                        print(f"    {line}")
                else:
                    failed += 1
                    print(f"cuda compile check: FAIL {name}\n{proc.stderr[-4000:]}")
    print(f"cuda compile check: {len(files) - failed} of {len(files)} files compiled")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
