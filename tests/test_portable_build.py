"""The default build runs on any x86-64-v2 CPU and its per-ISA kernel copies agree.

* scripts/check_portable_isa.py on the built `_C`: every AVX2/AVX-512 instruction of the
  library lies in the dispatched copies (namespaces cpu_avx2 / cpu_avx512), none in code that a
  baseline CPU could run;
* every copy (VOS_KERNELS_CPU_ISA=default, avx2, avx512: those this CPU has) against the eager
  reference, forward and backward of every op, in a fresh process each (tests/isa_ops_worker.py);
* the same run on an emulated Nehalem (x86-64-v2, no AVX) under qemu-user, when installed.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vos_kernels import _library

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "isa_ops_worker.py"
ISAS = ("default", "avx2", "avx512")  # lowest first (csrc/cpu/cpu_isa.h)

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import check_portable_isa  # noqa: E402

needs_extension = pytest.mark.skipif(not _library.EXTENSION_LOADED, reason="vos_kernels._C is not built")
x86_64 = platform.machine() in ("x86_64", "AMD64")


# Variables that pick a library's vector code path: a child (under qemu, an older CPU) must pick
# by its own cpuid, as a user's process does (ATEN_CPU_CAPABILITY=avx2 under an emulated Nehalem
# is an illegal instruction, not a finding).
_ISA_VARIABLES = ("VOS_KERNELS_CPU_ISA", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
                  "MKL_ENABLE_INSTRUCTIONS")


def _environment(isa: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _ISA_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    if isa:
        env["VOS_KERNELS_CPU_ISA"] = isa
    return env


def _worker(isa: str | None, prefix: tuple = (), timeout: float = 300) -> dict:
    proc = subprocess.run([*prefix, sys.executable, str(WORKER)], cwd=REPO_ROOT, env=_environment(isa),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@functools.lru_cache(maxsize=None)
def _best_isa() -> str:
    """The copy a fresh process runs without VOS_KERNELS_CPU_ISA (this test process may have it set)."""
    proc = subprocess.run([sys.executable, "-c", "import torch, vos_kernels; print(torch.ops.vos_kernels._cpu_isa())"],
                          cwd=REPO_ROOT, env=_environment(None), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split()[-1]


def _beyond_tolerance(result: dict) -> dict:
    return {case: ratio for case, ratio in result["worst_error_over_tolerance"].items() if not ratio <= 1.0}


# ---------------------------------------------------------------- objdump check
def test_classifier_sees_wide_instructions():
    assert check_portable_isa.classify("vfmadd231ps %zmm1,%zmm2,%zmm3") == (True, True)
    assert check_portable_isa.classify("vaddps %ymm0,%ymm1,%ymm2") == (True, False)
    assert check_portable_isa.classify("vmovss 0x10(%rip),%xmm1") == (True, False)  # VEX-encoded: AVX
    assert check_portable_isa.classify("vaddps %xmm17,%xmm1,%xmm2") == (True, True)  # EVEX register
    assert check_portable_isa.classify("kmovw %eax,%k1") == (True, True)
    assert check_portable_isa.classify("shlx %eax,%r12d,%eax") == (True, False)  # BMI2
    assert check_portable_isa.classify("addps %xmm0,%xmm1") == (False, False)
    assert check_portable_isa.classify("popcnt %rax,%rax") == (False, False)  # in x86-64-v2
    assert check_portable_isa.classify("tzcnt %eax,%eax") == (False, False)  # rep bsf on old CPUs
    assert check_portable_isa.isa_namespace("_ZN11vos_kernels10cpu_avx51212_GLOBAL__N_13fooEv") == "avx512"
    assert check_portable_isa.isa_namespace("_ZNK11vos_kernels8cpu_avx212_GLOBAL__N_13barclEll") == "avx2"
    assert check_portable_isa.isa_namespace("_ZZN11vos_kernels8cpu_avx23bazEvENKUlvE_clEv") == "avx2"
    # a template from elsewhere instantiated with our types must be baseline code
    assert check_portable_isa.isa_namespace("_ZN2at12parallel_forIZN11vos_kernels10cpu_avx5121fEvEUlllE_EEvlllOT_") \
        is None
    assert check_portable_isa.isa_namespace("_ZN11vos_kernels11cpu_default1fEv") is None


@needs_extension
@pytest.mark.skipif(not x86_64, reason="the ISA check is for x86-64 builds")
@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) is not installed")
def test_library_has_wide_instructions_only_in_the_dispatched_copies():
    if not torch.ops.vos_kernels._cpu_portable_build():
        pytest.skip("vos_kernels._C was built with VOS_KERNELS_CPU_FLAGS (e.g. -march=native): "
                    "a build for one CPU, not meant to be portable")
    from vos_kernels import _C

    problems = check_portable_isa.check(_C.__file__)
    assert not problems, "\n".join(problems[:20])


# ---------------------------------------------------------------- every copy vs the reference
@needs_extension
@pytest.mark.parametrize("isa", ISAS)
def test_isa_copy_matches_the_reference(isa):
    best = _best_isa()
    if ISAS.index(isa) > ISAS.index(best):
        pytest.skip(f"this CPU (or build) runs at most the {best} kernels")
    result = _worker(isa)
    assert result["isa"] == isa
    bad = _beyond_tolerance(result)
    assert not bad, f"{isa} kernels differ from the reference beyond kernel_utils.tolerance: {bad}"


@needs_extension
def test_bad_isa_request_is_an_error():
    proc = subprocess.run([sys.executable, "-c", "import torch, vos_kernels; torch.ops.vos_kernels._cpu_isa()"],
                          cwd=REPO_ROOT, env=_environment("sse9"), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "VOS_KERNELS_CPU_ISA must be one of default, avx2, avx512" in proc.stderr


# ---------------------------------------------------------------- an emulated baseline CPU
@needs_extension
@pytest.mark.slow
@pytest.mark.skipif(not x86_64, reason="emulates an x86-64 CPU")
@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="qemu-x86_64 (qemu-user) is not installed")
def test_runs_on_an_emulated_nehalem():
    """Import and every op under qemu-x86_64 -cpu Nehalem (SSE4.2, no AVX): ~1-2 minutes."""
    result = _worker(None, prefix=(shutil.which("qemu-x86_64"), "-cpu", "Nehalem"), timeout=900)
    assert result["isa"] == "default"
    bad = _beyond_tolerance(result)
    assert not bad, f"on Nehalem the kernels differ from the reference: {bad}"
