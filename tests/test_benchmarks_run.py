"""The benchmark runner's command line (no timing: performance lives in the recorded runs)."""
import csv
import math

import pytest

from benchmarks import run


def test_cases_filter_that_matches_nothing_is_an_error(capsys):
    assert run.main(["--ops", "soft_aggregate", "--cases", "no-such-case", "--no-record"]) == 2
    assert "no case name contains any of ['no-such-case']" in capsys.readouterr().err


def test_an_unavailable_backend_is_reported_skipped_not_timed_under_its_name(monkeypatch):
    """Without the C++ extension, "fused" must not be the eager reference under another name:
    its row says "skipped" with the reason, and nothing is timed for it."""
    import vos_kernels
    from benchmarks import record
    from benchmarks.bench_soft_aggregate import cases
    from benchmarks.harness import fused_variants, run_case

    real = vos_kernels.available_backends()
    monkeypatch.setattr(vos_kernels, "available_backends",
                        lambda: {**real, "cpu": (False, "vos_kernels._C is not built")})
    with pytest.warns(RuntimeWarning, match="'fused' skipped: backend 'cpu' is unavailable"):
        case = cases("cpu", quick=True, tiny=True)[0]
    rows = {r.variant: r for r in run_case(case, budget_s=0.0)}
    assert set(rows) == {"eager", "compiled", "fused"}
    fused = rows["fused"]
    assert fused.error == "skipped: backend 'cpu' is unavailable (vos_kernels._C is not built)"
    assert fused.passed is None and math.isnan(fused.median_ms)
    assert "| fused | skipped | skipped: backend 'cpu'" in record.table(list(rows.values()))
    monkeypatch.setattr(vos_kernels, "available_backends",
                        lambda: {**real, "cuda": (True, "assumed"), "triton": (True, "assumed")})
    # memory_read has no CUDA kernel: one GPU variant, Triton
    assert fused_variants("cuda", "memory_read", lambda backend: backend) == {"fused-triton": "triton"}
    assert fused_variants("cuda", "soft_aggregate", lambda backend: backend) == {"fused-cuda": "cuda",
                                                                                 "fused-triton": "triton"}


def test_model_benchmarks_skip_fused_when_the_default_backend_is_the_reference(monkeypatch):
    import vos_kernels
    from benchmarks.harness import VariantUnavailable, default_backend_variant

    real = vos_kernels.available_backends()
    monkeypatch.setattr(vos_kernels, "available_backends", lambda: {**real, "cpu": (False, "not built")})
    with pytest.warns(RuntimeWarning, match="bench_train_step: variant 'fused' skipped"):
        fused, skipped = default_backend_variant("bench_train_step", "cpu")
    assert not fused
    with pytest.raises(VariantUnavailable, match="not built"):
        skipped({"frames": None})
    monkeypatch.setattr(vos_kernels, "available_backends", lambda: {**real, "cpu": (True, "")})
    assert default_backend_variant("bench_train_step", "cpu") == (True, None)


def test_memory_floor_counts_the_bytes_of_each_direction():
    """soft_aggregate at O objects of P pixels: forward (2 O + 1) P, backward (3 O + 1) P floats."""
    from benchmarks.bandwidth import percent_of_floor, triad_gb_per_s
    from benchmarks.bench_soft_aggregate import cases

    by_direction = {c.direction: c for c in cases("cpu", quick=False, tiny=True) if "O=5" in c.shape}
    prob = by_direction["forward"].setup()["prob"]
    plane = prob[0, 0].numel() * 4
    assert by_direction["forward"].floor_bytes(prob=prob) == 11 * plane
    assert by_direction["backward"].floor_bytes(prob=prob) == 16 * plane
    assert by_direction["forward+backward"].floor_bytes(prob=prob) == 27 * plane
    # 1 GB at 10 GB/s takes 100 ms: a kernel at 200 ms runs at 50 % of its floor
    assert percent_of_floor(10**9, 200.0, 10.0) == pytest.approx(50.0)
    assert math.isnan(percent_of_floor(10**9, float("nan"), 10.0))
    assert triad_gb_per_s(elements=1 << 16, passes=2) > 0


def test_a_log_written_before_a_new_column_keeps_its_rows(tmp_path):
    from benchmarks import record

    path = tmp_path / "old.csv"
    path.write_text("timestamp,op,median_ms\n2026-01-01,soft_aggregate,1.5\n")
    record.append_csv(path, [{"timestamp": "2026-12-04", "op": "soft_aggregate", "median_ms": "1.2",
                              "floor_pct": "80.0"}])
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == record.COLUMNS
    assert [(r["median_ms"], r["floor_pct"]) for r in rows] == [("1.5", ""), ("1.2", "80.0")]


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
                           "--budget", "0.01", "--variants", "fused", "--device", "cpu"], cwd=repo, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert status() == before
    log = repo / "benchmarks" / "runs" / "soft_aggregate.csv"
    with open(log, newline="") as f:
        last = list(csv.DictReader(f))[-1]
    # the CPU rows carry their % of the memory floor and the bandwidth it was measured against
    assert last["variant"] == "fused" and float(last["floor_pct"]) >= 0 and float(last["triad_gb_s"]) > 0


def test_winograd_benchmark_smoke_run_writes_only_scratch(monkeypatch, tmp_path):
    """`python -m benchmarks.bench_winograd --quick`: both versions compiled and timed, the
    float32 results agree, and the rows go to the scratch folder (no --record)."""
    from benchmarks import bench_winograd, record

    monkeypatch.setattr(record, "SCRATCH_DIR", tmp_path)
    assert bench_winograd.main(["--quick", "--precision", "float32"]) == 0
    with open(tmp_path / "winograd.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["what"].split(" at ")[0] for r in rows] == ["conv 16->16 3x3 dil 1", "conv 16->16 3x3 dil 2"]
    for row in rows:
        assert float(row["direct_ms"]) > 0 and float(row["winograd_ms"]) > 0
        assert float(row["max_abs_diff"]) < 1e-4  # float32: rounding of reordered sums only
    assert "| conv 16->16 3x3 dil 2 at 9x13" in (tmp_path / "winograd.md").read_text()
