"""Stage `build`: compile vos_kernels._C in place against this machine's torch, then check it.

    python -m gpu_check.build --device cuda|cpu

No network and no pip: `python setup.py build_ext` (setup.py's own knobs) with
VOS_KERNELS_CUDA=1 on a GPU (CUDA kernels required; TORCH_CUDA_ARCH_LIST = this GPU's compute
capability only, unless set, so nvcc compiles one target) and setup.py's default (auto) for a
CPU dry run, so that a dry run never replaces a developer's CUDA build with a CPU one; MAX_JOBS
= the CPU count unless set. An up-to-date build is a no-op (ninja), and the extension is put
beside the package as an in-place build does (see `install_in_place`). Then a fresh
interpreter imports the package: its extension must be the one in this checkout, and on a GPU
the cuda and triton backends must both be available. Exit status 0 only then.
"""
from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import build_probe  # noqa: E402  (setup.py's exit status for a refused build)

CHECK = """
import json, sys, vos_kernels, vos_kernels._C as ext
print(json.dumps({"extension": ext.__file__, "backends": vos_kernels.available_backends()}))
"""


def install_in_place() -> Path:
    """Put the built extension beside the package (what `build_ext --inplace` does), but only
    when it differs from the one there, and by an atomic rename: a process that has the old
    file loaded (e.g. the pytest session that runs the dry run) keeps its mapping intact, where
    setuptools' in-place copy would truncate and rewrite the loaded file."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    built = max((REPO / "build").glob(f"lib*/vos_kernels/_C{suffix}"), key=lambda p: p.stat().st_mtime)
    target = REPO / "vos_kernels" / f"_C{suffix}"
    if target.exists() and filecmp.cmp(built, target, shallow=False):
        print(f"build: {target.relative_to(REPO)} is up to date")
        return target
    staging = target.with_name(target.name + ".tmp")
    shutil.copy2(built, staging)
    os.replace(staging, target)
    print(f"build: installed {built.relative_to(REPO)} as {target.relative_to(REPO)}")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), required=True)
    args = parser.parse_args(argv)
    env = dict(os.environ)
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    if args.device == "cuda":
        import torch

        major, minor = torch.cuda.get_device_capability()
        env["VOS_KERNELS_CUDA"] = "1"
        env.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")
    print(f"build: VOS_KERNELS_CUDA={env.get('VOS_KERNELS_CUDA', 'auto')} TORCH_CUDA_ARCH_LIST={env.get('TORCH_CUDA_ARCH_LIST', '-')} "
          f"MAX_JOBS={env['MAX_JOBS']}", flush=True)
    built = subprocess.run([sys.executable, "setup.py", "build_ext"], cwd=REPO, env=env)
    if built.returncode == build_probe.REFUSED and ("CXX" in env or "CC" in env):
        # The lent H200 image sets CXX=/opt/gcc/bin/g++, which links libstdc++ statically: setup.py's
        # probe refuses that extension (its C++ errors crash). The compiler on PATH is the system's.
        print(f"build: setup.py refused the build made with CXX={env.get('CXX', '-')} CC={env.get('CC', '-')} "
              "(see the probe's reason above); building again with the compiler on PATH", flush=True)
        env = {k: v for k, v in env.items() if k not in ("CXX", "CC")}
        built = subprocess.run([sys.executable, "setup.py", "build_ext"], cwd=REPO, env=env)
    if built.returncode != 0:
        print(f"build: setup.py build_ext failed (exit {built.returncode})", flush=True)
        return 1
    install_in_place()
    check = subprocess.run([sys.executable, "-c", CHECK], cwd=REPO, env=env, capture_output=True, text=True)
    sys.stderr.write(check.stderr)
    if check.returncode != 0:
        print("build: the built package does not import", flush=True)
        return 1
    import json

    info = json.loads(check.stdout.strip().splitlines()[-1])
    print(f"build: extension {info['extension']}")
    for name, (ok, why) in info["backends"].items():
        print(f"build: backend {name:9s} {'yes' if ok else 'no '}  {why}")
    if not Path(info["extension"]).resolve().is_relative_to(REPO):
        print(f"build: the extension imported is not this checkout's ({REPO})", flush=True)
        return 1
    missing = [name for name in (("cuda", "triton") if args.device == "cuda" else ("cpu",))
               if not info["backends"][name][0]]
    if missing:
        print(f"build: backends not available: {', '.join(missing)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
