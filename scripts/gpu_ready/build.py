"""The CUDA build of vos_kernels inside the gpu-ready venv, kept apart from the clone's CPU build.

    build/gpu-ready/lib   the importable packages: vos_kernels (its _C with CUDA kernels), vos_models
    build/gpu-ready/temp  ninja's objects (incremental between runs)
    build/gpu-ready/build.log

The clone's own vos_kernels/_C*.so (CPU build, same Python tag) and build/temp* are never
touched: setup.py runs with --build-lib/--build-temp pointing here. Flags come from
scripts/build_flags.py, like every build.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

_PTXAS_ENTRY = re.compile(r"Compiling entry function '(?P<name>[^']+)' for '(?P<arch>sm_\d+a?)'")
_PTXAS_PROPS = re.compile(r"(?P<stack>\d+) bytes stack frame, (?P<stores>\d+) bytes spill stores, "
                          r"(?P<loads>\d+) bytes spill loads")
# nvcc/cudafe ("file(12): warning #2361-D: ...") and gcc ("file:12:5: warning: ...") diagnostics.
_WARNING = re.compile(r"^(?P<file>[^\s:()]+)(?:\((?P<line>\d+)\)|:(?P<line2>\d+)(?::\d+)?):\s*warning\b:?\s*(?P<msg>.*)$")


@dataclasses.dataclass
class BuildResult:
    ok: bool
    seconds: float
    log: Path
    library: Path | None          # the built vos_kernels/_C*.so
    warnings: list[dict]          # our sources' warnings: file, line, message, count
    ptxas: dict                   # "mangled@arch" -> {stack, spill_stores, spill_loads}


def our_warnings(log_text: str, root: Path) -> list[dict]:
    """Distinct compiler warnings located in the project's csrc/, with how often each was printed."""
    csrc = str(root / "csrc")
    seen: dict[tuple[str, int, str], int] = {}
    for line in log_text.splitlines():
        match = _WARNING.match(line.strip())
        if not match or not os.path.abspath(match["file"]).startswith(csrc):
            continue
        key = (os.path.relpath(os.path.abspath(match["file"]), root), int(match["line"] or match["line2"]),
               match["msg"].strip())
        seen[key] = seen.get(key, 0) + 1
    return [{"file": f, "line": n, "message": m, "count": c} for (f, n, m), c in sorted(seen.items())]


def ptxas_usage(log_text: str) -> dict[str, dict]:
    """"mangled@arch" -> {stack, spill_stores, spill_loads} of every kernel that ptxas compiled
    (nvcc --resource-usage: "Compiling entry function 'K' for 'sm_80'", then its properties line)."""
    found, entry = {}, None
    for line in log_text.splitlines():
        if match := _PTXAS_ENTRY.search(line):
            entry = f"{match['name']}@{match['arch']}"
        elif entry and (match := _PTXAS_PROPS.search(line)):
            found[entry] = {"stack": int(match["stack"]), "spill_stores": int(match["stores"]),
                            "spill_loads": int(match["loads"])}
            entry = None
    return found


def merged_ptxas(path: Path, fresh: dict[str, dict]) -> dict[str, dict]:
    """This build's ptxas figures over those kept from earlier builds in `path`: ninja recompiles
    only changed sources, so an unchanged kernel's figures come from the run that compiled it."""
    import json

    kept = json.loads(path.read_text()) if path.exists() else {}
    kept.update(fresh)
    path.write_text(json.dumps(kept, indent=1, sort_keys=True))
    return kept


def build(root: Path, out: Path, python: str, cuda_home: str, arch_list: str, jobs: int, log=print) -> BuildResult:
    lib, temp, log_path = out / "lib", out / "temp", out / "build.log"
    # The package files are copied afresh each time (so a deleted module does not linger); the
    # objects in temp/ are kept, so an unchanged source is not recompiled.
    shutil.rmtree(lib, ignore_errors=True)
    env = dict(os.environ, CUDA_HOME=cuda_home, VOS_KERNELS_CUDA="1", TORCH_CUDA_ARCH_LIST=arch_list,
               MAX_JOBS=str(jobs))
    ccache = shutil.which("ccache")
    if ccache:  # a fresh CI clone then recompiles only what changed since the last run
        # The masquerading g++ link: torch's compiler check rejects CXX="ccache g++".
        if os.access("/usr/lib/ccache/g++", os.X_OK):
            env.setdefault("CXX", "/usr/lib/ccache/g++")
        env.setdefault("PYTORCH_NVCC", f"{ccache} {cuda_home}/bin/nvcc")
        env.setdefault("CCACHE_BASEDIR", str(root))
    cmd = [python, "setup.py", "build_py", "--build-lib", str(lib), "build_ext", "--build-lib", str(lib),
           "--build-temp", str(temp)]
    log(f"build: TORCH_CUDA_ARCH_LIST={arch_list}, MAX_JOBS={jobs}{', ccache' if ccache else ''}; log {log_path}")
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as handle:
        proc = subprocess.run(cmd, cwd=root, env=env, stdout=handle, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    text = log_path.read_text(errors="replace")
    libraries = sorted((lib / "vos_kernels").glob("_C*.so"))
    return BuildResult(proc.returncode == 0 and bool(libraries), seconds, log_path,
                       libraries[0] if libraries else None, our_warnings(text, root),
                       merged_ptxas(out / "ptxas.json", ptxas_usage(text)))


def last_lines(path: Path, count: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-count:])
