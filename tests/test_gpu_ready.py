"""`make gpu-ready`'s logic, checked quickly on CPU: cuobjdump parsing, occupancy maths, the
pass/fail rules, the report, the flags shared by the real build and the nvcc check, and the
Makefile/CI wiring. The full run (a CUDA torch venv and an nvcc build) is `make gpu-ready` itself."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import build_flags  # noqa: E402
from gpu_ready import build, occupancy, probe, report, resources, rules  # noqa: E402

# Recorded from `cuobjdump --dump-resource-usage` of the CUDA build (torch 2.11.0+cu130, nvcc 13.0),
# cut to two kernels x two arches (the second header shortened); the mangled names are the build's own.
RESOURCE_USAGE = """
Fatbin elf code:
================
arch = sm_80
code version = [1,7]
host = linux
compile_size = 64bit

Resource usage:
 Common:
  GLOBAL:0
 Function _ZN11vos_kernels12_GLOBAL__N_129soft_aggregate_forward_kernelIfdEEvPKT_PS2_llT0_S6_:
  REG:24 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:392 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _ZN11vos_kernels12_GLOBAL__N_137template_update_backward_scores_kernelIddEEvPKT_S4_S4_S4_PT0_PS2_S6_lllS5_b:
  REG:40 STACK:16 SHARED:0 LOCAL:0 CONSTANT[0]:441 TEXTURE:0 SURFACE:0 SAMPLER:0

Fatbin elf code:
================
arch = sm_90
Resource usage:
 Function _ZN11vos_kernels12_GLOBAL__N_129soft_aggregate_forward_kernelIfdEEvPKT_PS2_llT0_S6_:
  REG:22 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:392 TEXTURE:0 SURFACE:0 SAMPLER:0

Fatbin ptx code:
================
arch = sm_90
code version = [8,8]
"""


def test_parse_resource_usage_reads_every_kernel_and_arch():
    rows = resources.parse_resource_usage(RESOURCE_USAGE)
    assert [(r["arch"], r["regs"], r["stack"], r["shared"]) for r in rows] == [
        ("sm_80", 24, 0, 0), ("sm_80", 40, 16, 0), ("sm_90", 22, 0, 0)]
    assert rows[1]["mangled"].startswith("_ZN11vos_kernels12_GLOBAL__N_137template_update_backward_scores")


ELF = """
.nv.info._ZN11vos_kernels12_GLOBAL__N_129soft_aggregate_forward_kernelIfdEEvPKT_PS2_llT0_S6_
	<0x1>
	Attribute:	EIATTR_MAX_THREADS
	Format:	EIFMT_SVAL
	Value:	0x100 0x1 0x1
	<0x2>
	Attribute:	EIATTR_CBANK_PARAM_SIZE
	Format:	EIFMT_HVAL
	Value:	0x28
.nv.info._Z5otherv
	<0x1>
	Attribute:	EIATTR_CBANK_PARAM_SIZE
	Format:	EIFMT_HVAL
	Value:	0x8
"""


def test_parse_max_threads_reads_launch_bounds_only_where_declared():
    found = resources.parse_max_threads(ELF)
    assert found == {"_ZN11vos_kernels12_GLOBAL__N_129soft_aggregate_forward_kernelIfdEEvPKT_PS2_llT0_S6_": 256}


@pytest.mark.parametrize("demangled, expected", [
    ("void vos_kernels::(anonymous namespace)::template_update_backward_scores_kernel<double, double>"
     "(double const*, double*, long, bool)",
     {"name": "template_update_backward_scores<float64>", "dtype": "float64", "direction": "backward"}),
    ("void vos_kernels::(anonymous namespace)::soft_aggregate_forward_kernel<c10::BFloat16, float>(c10::BFloat16 "
     "const*, c10::BFloat16*, long, long, float, float)",
     {"name": "soft_aggregate_forward<bfloat16>", "dtype": "bfloat16", "direction": "forward"}),
    ("plain_kernel(float*)", {"name": "plain", "dtype": None, "direction": "forward"}),
])
def test_describe_names_dtype_and_direction(demangled, expected):
    got = resources.describe(demangled)
    assert {k: got[k] for k in expected} == expected


def test_occupancy_sm90_limits():
    sm90 = occupancy.limits("sm_90")
    # 256 threads, 32 registers, no shared memory: 8 blocks of 8 warps fill all 64 warps.
    assert occupancy.occupancy(sm90, 256, 32, 0) == (1.0, "threads")
    # 128 registers: 4096 per warp -> 16 warps by registers -> 2 blocks of 8 warps = 25 %.
    assert occupancy.occupancy(sm90, 256, 128, 0) == (0.25, "registers")
    # 64 threads and 100 KiB: (102400 + 1024 reserved) per block, 233472 // 103424 = 2 blocks of 2 warps.
    value, limiter = occupancy.occupancy(sm90, 64, 32, 100 * 1024)
    assert (value, limiter) == (4 / 64, "shared")
    # Registers round up per warp to 256: 33 registers cost as much as 40.
    assert occupancy.blocks_per_sm(sm90, 256, 33, 0) == occupancy.blocks_per_sm(sm90, 256, 40, 0)
    # 64 threads with nothing else: the 32-block limit binds (32 x 2 warps = 64 warps).
    assert occupancy.occupancy(sm90, 64, 16, 0) == (1.0, "threads")
    assert occupancy.occupancy(sm90, 32, 16, 0) == (0.5, "blocks")
    with pytest.raises(ValueError, match="threads per block"):
        occupancy.occupancy(sm90, 0, 16, 0)
    with pytest.raises(ValueError, match="sm_75"):
        occupancy.limits("sm_75")


PTXAS_LOG = """
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z3fwdPf' for 'sm_80'
ptxas info    : Function properties for _Z3fwdPf
    8 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 25 registers, used 0 barriers, 368 bytes cmem[0]
ptxas info    : Compiling entry function '_Z3bwdPd' for 'sm_90'
ptxas info    : Function properties for _Z3bwdPd
    16 bytes stack frame, 16 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 40 registers, used 0 barriers
"""


def test_ptxas_usage_and_merge_keep_kernels_that_were_not_recompiled(tmp_path):
    fresh = build.ptxas_usage(PTXAS_LOG)
    assert fresh == {"_Z3fwdPf@sm_80": {"stack": 8, "spill_stores": 0, "spill_loads": 0},
                     "_Z3bwdPd@sm_90": {"stack": 16, "spill_stores": 16, "spill_loads": 12}}
    kept = tmp_path / "ptxas.json"
    build.merged_ptxas(kept, fresh)
    merged = build.merged_ptxas(kept, {"_Z3bwdPd@sm_90": {"stack": 0, "spill_stores": 0, "spill_loads": 0}})
    assert merged["_Z3fwdPf@sm_80"]["stack"] == 8 and merged["_Z3bwdPd@sm_90"]["spill_stores"] == 0


def _kernel(name, direction="forward", arch="sm_90", regs=32, stack=0, shared=0, threads=256, dtype="float32"):
    return {"name": name, "kernel": name.split("<")[0] + "_kernel", "dtype": dtype, "direction": direction,
            "arch": arch, "regs": regs, "stack": stack, "local": 0, "shared": shared, "threads": threads,
            "mangled": f"_Z{name}"}


def test_kernel_rules_fail_forward_spills_and_shared_overflow_but_list_backward_spills():
    facts = {"dynamic_shared": [{"kernel": "attn_forward_kernel", "acc_bytes": 4, "bytes": 200 * 1024, "case": "c"}]}
    kernels = [_kernel("ok_forward<float32>", stack=8),
               _kernel("spilly_forward<float32>", stack=16),
               _kernel("spilly_backward<float64>", direction="backward", stack=16, dtype="float64"),
               _kernel("attn_forward<float32>", arch="sm_80", shared=1024, threads=64),
               _kernel("unbounded_forward<float32>", threads=None),
               _kernel("unlogged_forward<float32>")]
    spills = {"spilly_forward<float32>": 16, "spilly_backward<float64>": 16}
    ptxas = {f"{k['mangled']}@{k['arch']}": {"stack": k["stack"], "spill_stores": spills.get(k["name"], 0),
                                             "spill_loads": 0} for k in kernels[:-1]}
    rows, failures, notes = rules.kernel_rows(kernels, facts, ptxas)
    assert len(rows) == 6 and all(r["source"] == "cuda" for r in rows)
    # A stack frame without spill stores (a call frame) is reported, not judged.
    assert rows[0]["occupancy"] == 1.0 and rows[0]["spill_bytes"] == 0 and rows[0]["stack_bytes"] == 8
    assert any("spill: forward kernel spilly_forward<float32> (sm_90) spills 16 B" in f for f in failures)
    assert not any("spilly_backward" in f for f in failures)
    assert any("spilly_backward<float64>" in n and "16 B" in n for n in notes)
    assert rows[2]["spill_reason"]
    assert rows[3]["shared_bytes"] == 1024 + 200 * 1024 and rows[3]["dynamic_shared_bytes"] == 200 * 1024
    assert any("shared memory: attn_forward<float32> (sm_80)" in f and "166912" in f for f in failures)
    assert any("unbounded_forward" in f and "__launch_bounds__" in f for f in failures)
    assert any("no ptxas figures for unlogged_forward<float32>" in f for f in failures)
    assert len(failures) == 4


def _facts(**override):
    facts = {
        "vos_kernels_file": "/x/build/gpu-ready/lib/vos_kernels/__init__.py", "compiled_with_cuda": True,
        "public_ops": {"soft_aggregate": {"implemented": ["cpu", "cuda", "triton", "reference"]},
                       "memory_read": {"implemented": ["cpu", "triton", "reference"]}},
        "ops": [
            {"name": "vos_kernels::soft_aggregate_forward", "cpu": True, "cuda": True, "composite": False,
             "public_op": "soft_aggregate"},
            {"name": "vos_kernels::memory_read_topk_forward", "cpu": True, "cuda": False, "composite": False,
             "public_op": "memory_read", "triton_launcher": True},
            {"name": "vos_kernels::soft_aggregate", "cpu": False, "cuda": False, "composite": True,
             "public_op": "soft_aggregate"}],
        "routes": {"soft_aggregate": "cuda", "memory_read": "triton"}}
    facts.update(override)
    return facts


def test_registration_rules_pass_a_complete_build():
    assert rules.import_failures(_facts(), "/x/build/gpu-ready/lib") == []
    failures, notes = rules.registration_failures(_facts())
    assert failures == []
    assert any("memory_read_topk_forward" in n and "Triton" in n for n in notes)


def test_registration_rules_catch_each_problem():
    assert "import" in rules.import_failures({"import_error": "ImportError: undefined symbol"}, "/x")[0]
    assert any("not the CUDA build" in f for f in rules.import_failures(_facts(), "/elsewhere"))
    assert any("_compiled_with_cuda" in f
               for f in rules.import_failures(_facts(compiled_with_cuda=False), "/x/build/gpu-ready/lib"))
    ops = _facts()["ops"]
    ops[0]["cuda"] = False
    failures, _ = rules.registration_failures(_facts(ops=ops))
    assert failures == ["registration: vos_kernels::soft_aggregate_forward has a CPU kernel but no CUDA kernel "
                        "(missing TORCH_LIBRARY_IMPL(vos_kernels, CUDA, ...))"]
    ops = _facts()["ops"]
    ops[1]["triton_launcher"] = False
    failures, _ = rules.registration_failures(_facts(ops=ops))
    assert len(failures) == 1 and "memory_read_topk_forward" in failures[0]
    failures, _ = rules.registration_failures(_facts(routes={"soft_aggregate": "cuda", "memory_read": "reference"}))
    assert failures == ["route: memory_read on CUDA tensors resolves to 'reference', expected 'triton'"]


def test_probe_enumerates_the_dispatcher_of_this_build():
    """On this machine's build (CPU, or CUDA): every C++ kernel op with a CPU kernel is listed and
    owned by a public op; memory_read's are served by Triton launchers; `auto` routes CUDA tensors
    to each op's GPU backend."""
    pytest.importorskip("vos_kernels")
    from vos_kernels import _library
    if not _library.EXTENSION_LOADED:
        pytest.skip(f"vos_kernels._C is not built here: {_library.EXTENSION_STATUS}")
    facts = probe.collect()
    cpu_ops = {op["name"]: op for op in facts["ops"] if op["cpu"]}
    assert "vos_kernels::memory_read_topk_forward" in cpu_ops and "vos_kernels::soft_aggregate_forward" in cpu_ops
    assert all(op["public_op"] for op in cpu_ops.values())
    assert facts["routes"]["memory_read"] == "triton"
    assert {facts["routes"][op] for op in facts["public_ops"] if op != "memory_read"} == {"cuda"}
    failures, notes = rules.registration_failures(facts)
    memory_read_notes = [n for n in notes if "memory_read" in n]
    assert len(memory_read_notes) == 4, notes
    if facts["compiled_with_cuda"]:
        assert failures == []
    else:  # a CPU build: every CUDA-backed op's kernels are reported missing, and nothing else
        assert failures and all("no CUDA kernel" in f and "memory_read" not in f for f in failures)


@pytest.mark.parametrize("line, expected", [
    ("/r/csrc/cuda/template_update_kernel.cu(249): warning #2361-D: capturing structured bindings is a C++20 feature",
     ("csrc/cuda/template_update_kernel.cu", 249)),
    ("/r/csrc/cpu/x.cpp:118:51: warning: AVX vector return without AVX enabled changes the ABI [-Wpsabi]",
     ("csrc/cpu/x.cpp", 118)),
])
def test_build_log_warnings_in_our_sources(line, expected):
    text = f"{line}\n{line}\n/usr/include/foo.h(3): warning #1: not ours\n"
    (found,) = build.our_warnings(text, Path("/r"))
    assert (found["file"], found["line"], found["count"]) == (*expected, 2)
    failures, notes = rules.warning_failures([found])
    assert (len(failures), len(notes)) == ((1, 0) if "cuda" in expected[0] else (0, 1))


def test_report_json_md_and_recorded_table(tmp_path):
    data = {"kernels": [{"name": "k<float32>", "source": "cuda", "arch": "sm_90", "regs": 32, "spill_bytes": 0,
                         "shared_bytes": 0, "occupancy": 1.0, "dtype": "float32", "direction": "forward"}],
            "failures": [], "notes": ["n"], "environment": {"torch": "2.11.0+cu130"}, "timings": {"build_s": 88.0}}
    data["kernels"] += [{"name": "t", "source": "triton", "arch": "sm_80", "dtype": "fp32", "direction": "forward",
                         "regs": r, "spill_bytes": 0, "shared_bytes": 1024 * r, "occupancy": 1 / r} for r in (8, 16)]
    json_path, md_path = report.write(data, tmp_path / "out")
    loaded = json.loads(json_path.read_text())
    assert "| t | sm_80 | fp32 | forward | 16 | 0 | 16384 | 6% | 2 |" in md_path.read_text()
    assert set(loaded["kernels"][0]) >= {"name", "source", "arch", "regs", "spill_bytes", "shared_bytes", "occupancy"}
    assert "| k<float32> | sm_90 | float32 | forward | 32 | 0 | - | 0 | - | 100% |" in md_path.read_text()
    doc = tmp_path / "gpu.md"
    report.record(doc, "first")
    assert doc.read_text().startswith("# GPU readiness") and "first" in doc.read_text()
    doc.write_text(doc.read_text().replace(report.END, report.END + "\nkept by another author\n"))
    report.record(doc, "second")
    text = doc.read_text()
    assert "second" in text and "first" not in text and "kept by another author" in text
    doc.write_text("no markers\n")
    with pytest.raises(ValueError, match="gpu-ready:begin"):
        report.record(doc, "x")


def test_nvcc_flags_follow_the_installed_torch_and_have_no_host_only_flag():
    torch = pytest.importorskip("torch")
    flags = build_flags.nvcc_flags()
    assert "-g0" not in flags and "-g" not in flags  # nvcc rejects -g0; -g would put debug info in the .so
    std = build_flags.cxx_standard_flag()
    assert re.fullmatch(r"-std=c\+\+(17|20)", std) and flags.count(std) == 1
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    if (major, minor) <= (2, 11):
        assert std == "-std=c++17"
    arch = build_flags.cuda_arch_flags("8.0;9.0+PTX")
    assert set(arch) == {"-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
                         "-gencode=arch=compute_90,code=compute_90"}


def test_nvcc_check_compiles_with_the_real_build_flags(tmp_path):
    pytest.importorskip("torch")
    import check_cuda_compile
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    cmd = check_cuda_compile.command("nvcc", Path("a.cu"), tmp_path, tmp_path, "8.0;9.0+PTX")
    for flag in [*build_flags.nvcc_flags(), *build_flags.cuda_arch_flags("8.0;9.0+PTX"), *COMMON_NVCC_FLAGS,
                 "-DVOS_WITH_CUDA=1", "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C"]:
        assert flag in cmd
    assert len([f for f in cmd if f.startswith("-std=")]) == 1


def test_makefile_and_ci_wiring():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^gpu-ready:\n\t\$\(PYTHON\) scripts/gpu_ready/main\.py \$\(if \$\(RECORD\),--record\)$",
                     makefile, re.M)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make gpu-ready" in ci and "command -v nvcc" in ci and "skipped" in ci
    assert ci.index("make gpu-ready") < ci.index("make test")
    assert "set -e" not in ci.replace("set -euo", "")  # a gpu-ready failure must not skip make test
    assert ci.rstrip().endswith("exit $status")
    assert (ROOT / "scripts" / "gpu_ready" / "main.py").exists()
