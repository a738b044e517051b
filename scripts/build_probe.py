"""After a build: does vos_kernels._C raise a C++ argument error as a Python RuntimeError?

    python scripts/build_probe.py PATH/TO/_C.so      # exit 0 when it does, 1 (with the reason) when not

Why: a C++ kernel's argument check (TORCH_CHECK) formats its message with std::ostringstream. If
the extension carries its own copy of libstdc++ (linked statically, e.g. by a compiler wrapper that
adds -static-libstdc++, as the lent H200 machine's CXX=/opt/gcc/bin/g++ did on 2026-12-04), that
copy's streams meet torch's shared libstdc++ in one process and the first error message crashes
the interpreter (SIGSEGV in std::ostream::_M_insert) instead of raising. Every correct input still
works, so nothing else notices: only a bad direct call, as in tests/test_memory_read.py
::test_cpu_kernel_checks_direct_calls, dies. setup.py runs this probe on the extension it built and
refuses a build that fails it.

The probe loads the library in a fresh interpreter (torch.ops.load_library) and calls
memory_read_topk_forward with k = 0, which its check rejects (csrc/cpu/memory_read_kernel_impl.h).
"""
from __future__ import annotations

import shutil
import subprocess
import sys

REFUSED = 3  # setup.py's exit status when it refuses a build for this probe (scripts tell it from a compile error)

PROBE = """
import sys, torch
torch.ops.load_library(sys.argv[1])
x = torch.zeros(1, 1, 2)
try:
    torch.ops.vos_kernels.memory_read_topk_forward(x, x, x, 0, 1.0)
except RuntimeError as error:
    sys.exit(0 if "k must be in" in str(error) else f"unexpected message: {error}")
sys.exit("no error was raised for k = 0")
"""

# Symbols that libstdc++ defines and an extension only references (mangled: std::locale::classic(),
# std::ostream::_M_insert<long>, std::ios_base::Init::Init()).
LIBSTDCXX_SYMBOLS = ("_ZNSt6locale7classicEv", "_ZNSo9_M_insertIlEERSoT_", "_ZNSt8ios_base4InitC1Ev")


def libstdcxx_copies(library: str) -> list[str]:
    """The libstdc++ symbols that `library` defines itself (nm -D), or [] when nm is missing."""
    if shutil.which("nm") is None:
        return []
    listed = subprocess.run(["nm", "-D", "--defined-only", library], capture_output=True, text=True)
    defined = {line.split()[-1] for line in listed.stdout.splitlines() if line.strip()}
    return [name for name in LIBSTDCXX_SYMBOLS if name in defined]


def probe(library: str, compiler: str = "") -> str | None:
    """None when the library raises its argument error cleanly, else the reason, in a few lines."""
    done = subprocess.run([sys.executable, "-c", PROBE, library], capture_output=True, text=True, timeout=300)
    if done.returncode == 0:
        return None
    how = f"died of signal {-done.returncode}" if done.returncode < 0 else f"exited {done.returncode}"
    copies = libstdcxx_copies(library)
    cause = (f"it defines libstdc++'s own symbols ({', '.join(copies)}): libstdc++ was linked into it "
             "statically, and two copies of libstdc++ in one process crash on the first error message"
             if copies else "a C++ runtime that does not match torch's")
    built_with = f" built with {compiler}" if compiler else ""
    return (f"vos_kernels: the extension{built_with} {how} when a C++ argument check raised "
            f"(memory_read_topk_forward with k = 0); likely cause: {cause}.\n"
            f"  Rebuild with the system compiler (e.g. CXX=g++ CC=gcc, without -static-libstdc++).\n"
            f"  Probe output: {(done.stderr or done.stdout).strip()[-300:]}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.split("\n\n")[1])
    reason = probe(sys.argv[1])
    if reason:
        print(reason, file=sys.stderr)
        sys.exit(REFUSED)
    print("build probe: the extension raises C++ argument errors as RuntimeError")
