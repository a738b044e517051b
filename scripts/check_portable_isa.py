"""Check that a built `vos_kernels._C` runs on a baseline x86-64-v2 CPU.

The portable build compiles the hot CPU kernels once per instruction set (csrc/cpu/cpu_isa.h):
the copies in namespaces `vos_kernels::cpu_avx2` and `vos_kernels::cpu_avx512` may use AVX2 and
AVX-512, and are called only after cpuid said so. Everything else in the library must stay
within x86-64-v2 (SSE4.2, POPCNT). This script disassembles the whole shared library
(`objdump -d`) and fails when

  * a function outside the two ISA namespaces holds an instruction beyond x86-64-v2 (any
    VEX/EVEX instruction: AVX, AVX2, FMA, F16C, AVX-512; a ymm/zmm/mask register; BMI1/2,
    LZCNT, MOVBE, ADX), e.g. a std::/at:: template instantiated under `#pragma GCC target` that
    the linker then chose for the baseline callers too (COMDAT folding);
  * a function in `cpu_avx2` holds an AVX-512 instruction;
  * the ISA namespaces hold no AVX2 / AVX-512 code at all (the dispatch would be empty).

Functions are classified by their mangled names: a function whose name starts with
`_ZN11vos_kernels8cpu_avx2` (or `_ZNK...`, a const member, or `_ZZN...`, a lambda or local entity
inside one) belongs to cpu_avx2; templates from elsewhere instantiated with our types (`_ZN2at12parallel_forIZN11vos_
kernels10cpu_avx512...`) do not, and must be baseline code. TZCNT is allowed everywhere: GCC
emits it as `rep bsf` for generic x86-64, which older CPUs execute as BSF with the same result
for a non-zero input.

Usage: python scripts/check_portable_isa.py [path/to/_C.so] [--verbose]
Exit status 0 when the library is portable, 1 with a list of offending functions otherwise.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field

ISA_NAMESPACES = {"avx2": "8cpu_avx2", "avx512": "10cpu_avx512"}

_FUNCTION = re.compile(r"^[0-9a-f]+ <(?P<name>[^>]+)>:$")
_INSTRUCTION = re.compile(r"^\s*[0-9a-f]+:\s+(?P<text>.*)$")
# Scalar (non-VEX) instructions beyond x86-64-v2: BMI1, BMI2, LZCNT, MOVBE, ADX.
_BEYOND_V2_SCALAR = {"andn", "bextr", "blsi", "blsmsk", "blsr", "bzhi", "mulx", "pdep", "pext", "rorx", "sarx",
                     "shlx", "shrx", "lzcnt", "movbe", "adcx", "adox"}
_WIDE_REGISTER = re.compile(r"%(ymm|zmm)\d+|%k[0-7]\b")
_AVX512_OPERAND = re.compile(r"%zmm\d+|%k[0-7]\b|%[xy]mm(1[6-9]|2\d|3[01])\b|\{1to\d+\}|\{z\}")
# EVEX-only mnemonics (AVX-512 even on xmm/ymm registers 0-15); compares into mask registers
# are caught by their %k operand.
_AVX512_MNEMONIC = re.compile(
    r"^(vpternlog|vscalef|vrndscale|vperm[it]2|vcompress|vexpand|vfixupimm|vgetexp|vgetmant|vrange|vreduce|"
    r"vrcp14|vrsqrt14|vpmov[a-z]*2m|vpmovm2|vpbroadcastm|vextract[fi](32|64)x|vinsert[fi](32|64)x|"
    r"vshuf[fi](32|64)x|vpro[lr]|vpsraq|vpabsq|vp(max|min)[su]q|vcvt[a-z0-9]*2u|vcvtu|vdbpsadbw|valign[dq]|"
    r"vblendm|vpblendm)")


@dataclass
class FunctionIsa:
    """The instruction-set classes one function uses, with a sample instruction each."""
    beyond_v2: str | None = None
    avx2_plus: str | None = None  # VEX/EVEX with ymm/zmm or any AVX2-era encoding
    avx512: str | None = None
    mnemonics: set[str] = field(default_factory=set)


def classify(text: str) -> tuple[bool, bool]:
    """(beyond x86-64-v2, AVX-512) for one disassembled instruction (AT&T syntax)."""
    parts = text.split(None, 1)
    if not parts:
        return False, False
    mnemonic = parts[0]
    if mnemonic in ("rex", "data16", "lock", "rep", "repz", "repnz", "notrack", "bnd", "cs", "ds") and len(parts) > 1:
        rest = parts[1].split(None, 1)
        mnemonic, parts = rest[0], rest
    operands = parts[1] if len(parts) > 1 else ""
    vex = mnemonic.startswith("v") and mnemonic not in ("verr", "verw")
    avx512 = bool(_AVX512_OPERAND.search(operands)) or (vex and bool(_AVX512_MNEMONIC.match(mnemonic))) or \
        mnemonic.startswith("k") and bool(re.search(r"%k[0-7]", operands))
    beyond = vex or avx512 or mnemonic in _BEYOND_V2_SCALAR or bool(_WIDE_REGISTER.search(operands))
    return beyond, avx512


def function_isa(library: str, objdump: str = "objdump") -> dict[str, FunctionIsa]:
    """Per function (mangled name) of `library`, the instruction classes it uses."""
    proc = subprocess.run([objdump, "-d", "--no-show-raw-insn", "-w", library], check=True, capture_output=True,
                          text=True)
    result: dict[str, FunctionIsa] = defaultdict(FunctionIsa)
    current = None
    for line in proc.stdout.splitlines():
        m = _FUNCTION.match(line)
        if m:
            current = m.group("name")
            continue
        m = _INSTRUCTION.match(line)
        if not m or current is None:
            continue
        text = m.group("text").split("#")[0].strip()
        beyond, avx512 = classify(text)
        if beyond:
            info = result[current]
            info.beyond_v2 = info.beyond_v2 or text
            if avx512:
                info.avx512 = info.avx512 or text
            info.mnemonics.add(text.split()[0])
    return dict(result)


def isa_namespace(mangled: str) -> str | None:
    """'avx2' / 'avx512' for a function in (or local to a function in) that namespace, else None."""
    for isa, component in ISA_NAMESPACES.items():
        if re.match(rf"^_Z+N[rVKRO]*11vos_kernels{component}\d", mangled):
            return isa
    return None


def demangle(names: list[str]) -> list[str]:
    if not names or shutil.which("c++filt") is None:
        return names
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def check(library: str, verbose: bool = False) -> list[str]:
    """Problems of `library` (an empty list when it is portable); prints a summary."""
    functions = function_isa(library)
    problems: list[tuple[str, str]] = []
    counts = {"avx2": 0, "avx512": 0}
    for name, info in sorted(functions.items()):
        isa = isa_namespace(name)
        if isa is None:
            problems.append((name, f"instruction beyond x86-64-v2 outside the ISA namespaces: {info.beyond_v2}"))
        elif isa == "avx2" and info.avx512:
            problems.append((name, f"AVX-512 instruction in the avx2 copy: {info.avx512}"))
        else:
            counts[isa] += 1
    print(f"{library}: {len(functions)} functions use instructions beyond x86-64-v2: "
          f"{counts['avx2']} in vos_kernels::cpu_avx2, {counts['avx512']} in vos_kernels::cpu_avx512, "
          f"{len(problems)} elsewhere or misplaced")
    if verbose:
        for name, pretty in zip(sorted(functions), demangle(sorted(functions))):
            print(f"  {isa_namespace(name) or 'BASELINE?'}: {pretty[:160]}")
    messages = [f"{pretty[:200]}: {why}" for (name, why), pretty in zip(problems, demangle([n for n, _ in problems]))]
    if counts["avx2"] == 0 or counts["avx512"] == 0:
        messages.append(f"expected AVX2 and AVX-512 code in the ISA namespaces, found {counts} functions: "
                        "the run-time dispatch would have nothing to pick (built without the ISA copies?)")
    return messages


def default_library() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found = sorted(glob.glob(os.path.join(root, "vos_kernels", "_C*.so")))
    if not found:
        sys.exit(f"no vos_kernels/_C*.so under {root}: build it first (python setup.py build_ext --inplace)")
    return found[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("library", nargs="?", help="the shared library (default: vos_kernels/_C*.so of this checkout)")
    parser.add_argument("--verbose", action="store_true", help="list every function that uses wide instructions")
    args = parser.parse_args(argv)
    if shutil.which("objdump") is None:
        sys.exit("objdump (binutils) is required")
    problems = check(args.library or default_library(), args.verbose)
    for p in problems:
        print("NOT PORTABLE:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
