"""Every Triton kernel compiles for sm_90 with the installed triton, at the specializations its
launcher chooses, without spilling in a forward kernel (scripts/gpu_ready/triton_aot.py --quick).

This catches what the CPU interpreter lets through: a jit function reading a plain Python global
(`NameError: Cannot access global variable ...`), constructs that only the compiler checks, tiles
that overflow the registers. The full sweep (sm_80 and sm_90, all shapes, dtypes and candidate
configurations) is `make gpu-ready`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_ready" / "triton_aot.py"
sys.path.insert(0, str(SCRIPT.parent))


def _skip_reason() -> str | None:
    try:
        import triton
        from triton.backends import backends
    except ImportError as exc:
        return f"triton is not importable: {exc}"
    if "nvidia" not in backends:
        return f"triton {triton.__version__} has no NVIDIA backend"
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not (bundled.exists() or Path("/usr/local/cuda/bin/cuobjdump").exists() or shutil.which("cuobjdump")):
        return "no cuobjdump (neither triton's nor the CUDA toolkit's)"
    return None


def launched_kernels() -> set[str]:
    """The @triton.jit kernels of vos_kernels/triton (by the project's convention: names end in _kernel)."""
    names = set()
    for path in (ROOT / "vos_kernels" / "triton").glob("*.py"):
        names |= set(re.findall(r"@triton\.jit\s*\ndef (\w+_kernel)\(", path.read_text()))
    return names


@pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))
def test_every_kernel_compiles_for_sm90_without_forward_spills(tmp_path):
    out = tmp_path / "triton.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    run = subprocess.run([sys.executable, str(SCRIPT), "--arch", "90", "--quick", "--dtypes", "fp32", "bf16",
                          "--jobs", "2", "--out", str(out), "--cache", str(tmp_path / "cache.json")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert out.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["failures"] == [] and run.returncode == 0, "\n".join(report["failures"]) + run.stderr[-3000:]
    rows = report["kernels"]
    compiled = {r["name"] for r in rows}
    assert launched_kernels() - compiled == set(), "kernels never launched by the captured shapes"
    assert {(r["dtype"], r["precision"]) for r in rows} >= {("fp32", "ieee"), ("fp32", "tf32"), ("bf16", "ieee")}
    for r in rows:
        assert r["arch"] == 90 and r["regs"] > 0 and r["shared_bytes"] is not None and 0 < r["occupancy"] <= 1


def test_occupancy_estimate():
    import triton_aot
    # 4 warps at 255 registers: 8 warps' worth per 64K registers -> 2 blocks of 4 warps = 8 of 64 warps
    assert triton_aot.occupancy(90, 255, 0, 4) == 0.125
    # 32 registers: the thread limit (2,048) binds -> 64 warps
    assert triton_aot.occupancy(90, 32, 0, 4) == 1.0
    # 100 KB of shared memory per block: 2 blocks fit in 228 KB on sm_90, 1 in 164 KB on sm_80
    assert triton_aot.occupancy(90, 32, 100 * 1024, 4) == 0.125
    assert triton_aot.occupancy(80, 32, 100 * 1024, 4) == 0.0625
