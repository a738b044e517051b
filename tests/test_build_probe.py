"""scripts/build_probe.py, which setup.py runs on every extension it builds: a C++ argument check
must reach Python as a RuntimeError, not kill the interpreter.

Found on the lent H200 machine (2026-12-04): its image's CXX=/opt/gcc/bin/g++ linked libstdc++
statically into `_C`, and every TORCH_CHECK that fired crashed the process (SIGSEGV in
std::ostream::_M_insert<long>), while every correct input worked."""
from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

import vos_kernels._C as extension
from vos_kernels import _library

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import build_probe  # noqa: E402

needs_extension = pytest.mark.skipif(not _library.EXTENSION_LOADED, reason="vos_kernels._C is not built")


@needs_extension
def test_the_built_extension_raises_its_argument_errors():
    assert build_probe.probe(extension.__file__) is None


@needs_extension
def test_the_built_extension_uses_the_shared_libstdcxx():
    """Our build links libstdc++ dynamically (torch's copy); a static copy is what crashed."""
    assert build_probe.libstdcxx_copies(extension.__file__) == []


def test_a_library_without_the_check_is_refused(tmp_path):
    """A library that loads but does not register the op: the probe's call fails with another error."""
    import torch

    reason = build_probe.probe(str(Path(torch.__file__).parent / "lib" / "libc10.so"), compiler="g++-test")
    assert reason is not None and "exited 1" in reason and "built with g++-test" in reason


def test_a_crash_is_reported_with_its_signal(monkeypatch):
    """The failure found on the H200, stood in for by a probe that dies of SIGSEGV."""
    monkeypatch.setattr(build_probe, "PROBE", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    reason = build_probe.probe("unused.so")
    assert reason is not None and f"died of signal {int(signal.SIGSEGV)}" in reason
    assert "Rebuild with the system compiler" in reason

