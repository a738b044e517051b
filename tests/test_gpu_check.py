"""The GPU check (scripts/gpu_check.sh) and the H200 roofline (benchmarks/roofline.py, docs/gpu.md).

The dry run runs every stage of the GPU check on the CPU at toy sizes, so that the script
cannot rot on machines without a GPU; the roofline tests pin the cost model to figures worked
out by hand and the doc's table to the code.
"""
from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import pytest

from benchmarks import roofline

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "gpu.md"


def test_doc_table_is_the_code_output():
    assert roofline.doc_block(DOC.read_text()) == roofline.markdown(), \
        "docs/gpu.md is stale: run python -m benchmarks.roofline --update-doc docs/gpu.md"


def test_doc_keeps_the_gpu_ready_markers():
    text = DOC.read_text()
    heading = text.index("## Kernel resources (sm_80, sm_90)")
    begin, end = text.index("<!-- gpu-ready:begin -->"), text.index("<!-- gpu-ready:end -->")
    assert heading < begin < end


def test_window_segments_follow_the_contract():
    # bench_clip_window_attention.py's hand count: (1+4+4)(9+3*49+36)(9+7*49+4) pairs at L=5, 30x54
    assert roofline.window_segments(5, 2, 1) == [1, 2, 2]
    assert roofline.window_segments(30, 7, 3) == [3, 7, 7, 7, 6]
    assert roofline.window_segments(54, 7, 0) == [7] * 7 + [5]
    assert roofline.window_pairs((5, 30, 54), (2, 7, 7), (1, 3, 3)) == 615_168


def test_costs_match_hand_counts():
    # soft_aggregate O=5 at 480x854 fp32: 11 planes of 1.64 MB; template_update B=4: 0.85 GFLOP
    f = roofline.floor("soft_aggregate", "B=1 O=5 480x854", "forward", "float32")
    assert f.bytes == 11 * 480 * 854 * 4 and f.bound == "memory"
    assert f.target_us == pytest.approx(f.memory_us / 0.7)
    t = roofline.floor("template_update", "B=4 Nt=128 Ct=128 P=6480", "forward", "float32")
    assert t.flops == 2 * 4 * 128 * 128 * 6480 and t.bound == "compute"
    assert t.target_us == pytest.approx(t.compute_us / roofline.COMPUTE_TARGET["template_update"][1])
    dense = roofline.floor("memory_read", "T=20 N=1620 Ck=64 Cv=512 dense O=1", "forward", "bfloat16")
    assert dense.flops == 2 * 1620 * 20 * 1620 * (64 + 512)
    assert dense.compute_us == pytest.approx(dense.flops / 989e12 * 1e6)


def test_unknown_op_is_an_error_naming_it():
    with pytest.raises(ValueError, match="no_such_op"):
        roofline.compare_rows([{"op": "no_such_op", "shape": "B=1", "direction": "forward", "dtype": "float32",
                                "variant": "fused", "median_ms": "1.0"}])


def _tracked_changes() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_dry_run_passes_every_stage_and_changes_no_tracked_file(tmp_path):
    before = _tracked_changes()
    out = tmp_path / "gpu_check"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.startswith("gpu_check: missing on this machine:")
    stages = {row["name"]: row for row in _rows(out / "stages.csv")}
    assert list(stages) == ["build", "tests", "kernels", "models", "models-compile", "train", "long-video", "roofline"]
    for name, row in stages.items():
        if name == "models-compile":  # the compiled model variants exist on CUDA only
            assert row["status"] == "skipped" and "CUDA-only" in row["detail"]
        else:
            assert row["status"] == "passed", (name, row, (out / row["log"]).read_text()[-2000:])
    kernel_rows = [r for p in sorted((out / "kernels").glob("*.csv")) for r in _rows(p)]
    assert {r["op"] for r in kernel_rows} == {"soft_aggregate", "min_background_aggregate", "memory_read",
                                              "template_update", "clip_window_attention"}
    fused = [r for r in kernel_rows if r["variant"].startswith("fused")]
    assert fused and all(r["passed"] == "True" for r in fused)
    compared = _rows(out / "roofline_comparison.csv")
    assert len(compared) == len(fused) and all(r["verdict"] in ("meets", "misses") for r in compared)
    assert {r["variant"] for r in _rows(out / "models" / "models.csv")} >= {"plain", "bfloat16"}
    train = _rows(out / "train" / "train_step.csv")
    assert {r["variant"] for r in train} == {"reference", "fused"} and all(r["passed"] != "False" for r in train)
    assert list((out / "long_video").glob("long_video_pcvos_*.csv"))
    summary = (out / "summary.md").read_text()
    for section in ("## Stages", "## Tests", "## Kernels against the H200 roofline", "## Models",
                    "## Training step", "## Long video"):
        assert section in summary
    assert "flat after frame" in summary
    assert _tracked_changes() == before


def test_every_gpu_test_path_exists():
    import sys
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from gpu_check import stages
    finally:
        sys.path.remove(str(REPO / "scripts"))
    for path in stages.OP_TESTS + stages.ENGINE_GPU_TESTS:
        file, _, name = path.partition("::")
        assert (REPO / file).exists(), path
        if name:
            assert f"def {name}(" in (REPO / file).read_text(), path


def test_variant_filters_keep_the_baseline():
    from benchmarks.harness import BenchCase
    from benchmarks.run import _keep_variants

    def case():
        variants = {name: None for name in ("float32", "bfloat16", "bfloat16+channels_last+compile", "float16")}
        return BenchCase("m", "s", "inference", None, "cpu", dict, variants, baseline="float32")

    assert list(_keep_variants(case(), ["compile"], None).variants) == ["float32", "bfloat16+channels_last+compile"]
    assert list(_keep_variants(case(), None, ["compile"]).variants) == ["float32", "bfloat16", "float16"]
    assert list(_keep_variants(case(), ["16"], ["compile", "bfloat"]).variants) == ["float32", "float16"]


def test_gpu_plan_fits_nine_minutes(tmp_path):
    import sys
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from gpu_check import stages
    finally:
        sys.path.remove(str(REPO / "scripts"))
    plan = stages.plan(dry_run=False)
    assert [s.name for s in plan] == ["build", "tests", "kernels", "models", "models-compile", "train", "long-video",
                                      "roofline"]
    assert sum(s.timeout_s for s in plan) <= stages.TOTAL_BUDGET_S <= 540
    assert all(not s.skip and s.argv(tmp_path) for s in plan)  # every stage has its command on a GPU


def test_build_stage_builds_again_with_the_path_compiler_when_setup_refuses(monkeypatch, capsys):
    """The lent H200's image sets CXX=/opt/gcc/bin/g++, which linked libstdc++ statically; setup.py's
    probe refuses that build (exit status build_probe.REFUSED) and the stage builds once more with
    CXX/CC removed, saying so. A plain compile error (exit 1) is not retried."""
    import json
    import sys
    from types import SimpleNamespace

    sys.path.insert(0, str(REPO / "scripts"))
    import build_probe
    from gpu_check import build

    def fake_run(refuse_with):
        calls = []

        def run(command, cwd=None, env=None, capture_output=False, text=False):
            calls.append((command, dict(env)))
            if command[1] == "setup.py":
                return SimpleNamespace(returncode=refuse_with if len(calls) == 1 else 0)
            report = {"extension": str(REPO / "vos_kernels" / "_C.so"), "backends": {"cpu": [True, ""]}}
            return SimpleNamespace(returncode=0, stdout=json.dumps(report), stderr="")
        return calls, run

    monkeypatch.setattr(build, "install_in_place", lambda: None)
    monkeypatch.setenv("CXX", "/opt/gcc/bin/g++")
    calls, run = fake_run(build_probe.REFUSED)
    monkeypatch.setattr(build.subprocess, "run", run)
    assert build.main(["--device", "cpu"]) == 0
    assert [c[0][1] for c in calls] == ["setup.py", "setup.py", "-c"]
    assert calls[0][1]["CXX"] == "/opt/gcc/bin/g++" and "CXX" not in calls[1][1]
    assert "building again with the compiler on PATH" in capsys.readouterr().out
    calls, run = fake_run(1)
    monkeypatch.setattr(build.subprocess, "run", run)
    assert build.main(["--device", "cpu"]) == 1 and len(calls) == 1
