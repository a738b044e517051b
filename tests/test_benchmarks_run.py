"""The benchmark runner's command line (no timing: performance lives in the recorded runs)."""
import pytest

from benchmarks import run


def test_cases_filter_that_matches_nothing_is_an_error(capsys):
    assert run.main(["--ops", "soft_aggregate", "--cases", "no-such-case", "--no-record"]) == 2
    assert "no case name contains any of ['no-such-case']" in capsys.readouterr().err


def test_an_unavailable_backend_is_left_out_not_timed_under_its_name(monkeypatch):
    """Without the C++ extension, "fused" must not be the eager reference under another name."""
    import vos_kernels
    from benchmarks.harness import fused_variants

    real = vos_kernels.available_backends()
    monkeypatch.setattr(vos_kernels, "available_backends",
                        lambda: {**real, "cpu": (False, "vos_kernels._C is not built")})
    with pytest.warns(RuntimeWarning, match="'fused' left out: backend 'cpu' is unavailable"):
        assert fused_variants("cpu", "soft_aggregate", lambda backend: backend) == {}
    monkeypatch.setattr(vos_kernels, "available_backends",
                        lambda: {**real, "cuda": (True, "assumed"), "triton": (True, "assumed")})
    # memory_read has no CUDA kernel: one GPU variant, Triton
    assert fused_variants("cuda", "memory_read", lambda backend: backend) == {"fused-triton": "triton"}
    assert fused_variants("cuda", "soft_aggregate", lambda backend: backend) == {"fused-cuda": "cuda",
                                                                                 "fused-triton": "triton"}


def test_a_default_run_changes_no_tracked_file(tmp_path):
    """`python -m benchmarks.run --ops soft_aggregate --quick` writes to the git-ignored
    benchmarks/runs/, never to the tracked benchmarks/results/ (only --record does)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    status = lambda: subprocess.run(["git", "status", "--porcelain", "--", "benchmarks"], cwd=repo,  # noqa: E731
                                    capture_output=True, text=True).stdout
    before = status()
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", "--ops", "soft_aggregate", "--quick", "--tiny",
                           "--budget", "0.01", "--variants", "fused"], cwd=repo, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert status() == before
    assert (repo / "benchmarks" / "runs" / "soft_aggregate.csv").is_file()
