"""Resource usage of every CUDA kernel in a built .so, read with cuobjdump.

`cuobjdump --dump-resource-usage` gives, per arch and kernel, REG (registers per thread), STACK
(stack frame bytes per thread: register spills and local arrays), LOCAL, SHARED (static shared
memory per block). `cuobjdump -elf` gives each kernel's EIATTR_MAX_THREADS, the threads per block
of its __launch_bounds__ (the launch code uses exactly that many; every kernel declares it).
"""
from __future__ import annotations

import re
import subprocess

_ARCH = re.compile(r"^arch = (sm_\d+a?)\s*$")
_FUNCTION = re.compile(r"^\s*Function (\S+):\s*$")
_USAGE = re.compile(r"([A-Z_]+(?:\[\d+\])?):(\d+)")
_NV_INFO = re.compile(r"^\s*\.nv\.info\.(\S+)\s*$")
_MAX_THREADS = re.compile(r"EIATTR_MAX_THREADS")
_VALUE = re.compile(r"Value:\s*((?:0x[0-9a-fA-F]+\s*)+)")

# scalar_t spellings in demangled template arguments -> dtype names
_DTYPES = {"float": "float32", "double": "float64", "c10::Half": "float16", "c10::BFloat16": "bfloat16"}


def parse_resource_usage(text: str) -> list[dict]:
    """Rows {mangled, arch, regs, stack, local, shared} of `cuobjdump --dump-resource-usage` text."""
    rows, arch, function = [], None, None
    for line in text.splitlines():
        if match := _ARCH.match(line.strip()):
            arch = match.group(1)
        elif match := _FUNCTION.match(line):
            function = match.group(1)
        elif function and "REG:" in line:
            usage = dict((key, int(value)) for key, value in _USAGE.findall(line))
            rows.append({"mangled": function, "arch": arch, "regs": usage.get("REG", 0),
                         "stack": usage.get("STACK", 0), "local": usage.get("LOCAL", 0),
                         "shared": usage.get("SHARED", 0)})
            function = None
    return rows


def parse_max_threads(elf_text: str) -> dict[str, int]:
    """mangled kernel -> threads per block from EIATTR_MAX_THREADS in `cuobjdump -elf` text."""
    found, section, pending = {}, None, False
    for line in elf_text.splitlines():
        if match := _NV_INFO.match(line):
            section, pending = match.group(1), False
        elif section and _MAX_THREADS.search(line):
            pending = True
        elif section and pending and (match := _VALUE.search(line)):
            x, y, z = (int(v, 16) for v in match.group(1).split()[:3])
            found[section] = x * y * z
            pending = False
    return found


def demangle(names: list[str]) -> dict[str, str]:
    if not names:
        return {}
    proc = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
    return dict(zip(names, proc.stdout.splitlines()))


def describe(demangled: str) -> dict:
    """name (kernel without `_kernel`, with its dtype), dtype and direction of one demangled kernel."""
    head = demangled.replace("(anonymous namespace)", "anonymous").split("(")[0]
    match = re.search(r"(\w+)<([^>]*)>\s*$", head) or re.search(r"(\w+)\s*$", head)
    base = match.group(1)
    args = match.group(2).split(",") if match.lastindex and match.lastindex >= 2 else []
    dtype = _DTYPES.get(args[0].strip(), args[0].strip()) if args else None
    op = base[:-len("_kernel")] if base.endswith("_kernel") else base
    return {"name": f"{op}<{dtype}>" if dtype else op, "kernel": base, "dtype": dtype,
            "direction": "backward" if "backward" in op else "forward"}


def kernels_of(library: str, cuobjdump: str) -> list[dict]:
    """Every kernel x arch of the .so: name, kernel, dtype, direction, arch, regs, stack, local,
    shared (static), threads (launch bounds; None if undeclared), mangled."""
    usage = subprocess.run([cuobjdump, "--dump-resource-usage", library], capture_output=True, text=True)
    if usage.returncode != 0:
        raise RuntimeError(f"cuobjdump --dump-resource-usage {library} failed: {usage.stderr.strip()[-500:]}")
    elf = subprocess.run([cuobjdump, "-elf", library], capture_output=True, text=True)
    if elf.returncode != 0:
        raise RuntimeError(f"cuobjdump -elf {library} failed: {elf.stderr.strip()[-500:]}")
    rows = parse_resource_usage(usage.stdout)
    threads = parse_max_threads(elf.stdout)
    names = demangle(sorted({row["mangled"] for row in rows}))
    for row in rows:
        row.update(describe(names[row["mangled"]]))
        row["threads"] = threads.get(row["mangled"])
    return rows
