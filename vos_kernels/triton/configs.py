"""Launch configurations of every Triton kernel: the one place the launchers and the
ahead-of-time compile step (scripts/gpu_ready/triton_aot.py) take them from.

A configuration is the kernel's tile constexprs plus num_warps and num_stages. It depends on
the target (compute capability and SM count, or the CPU interpreter), the input dtype, the dot
precision and a few problem sizes that fix register-resident tiles (key channels, k, window
tokens, head-dim chunk). Each `<kernel>` function below returns the candidates for one launch,
best first: the launcher runs the first; the AOT step compiles all of them for sm_80 and sm_90
and fails when any forward candidate spills, so the list is the kernel's spill-free tuning
space. Under the interpreter there is exactly one candidate (it runs programs one by one, and
autotuning there would only multiply test time).

Float32 dots follow torch's float32 matmul precision (`torch.get_float32_matmul_precision()`):
"highest" -> IEEE products, which Triton lowers to FMA loops whose operands and accumulator
live in registers, so the IEEE tiles are smaller; "high"/"medium" -> TF32 tensor cores.
bfloat16/float16 operands always use tensor cores (float32 accumulation). The interpreter's
`tl.dot` on bfloat16 operands returns garbage (triton 3.x), so there the kernels upcast
bfloat16 tiles to float32 before the dot (`upcast_dots`).

The candidates were chosen from ptxas's own figures (scripts/gpu_ready/triton_aot.py) at the
benchmarks' and the four models' 480p shapes (Ck = 64, k = 20, windows of up to 98 tokens, head
dims 32-512) for sm_80 and sm_90: ptxas's register allocation moves with tile sizes, warps,
stages and even the divisibility of M by 16, so FMA (float32 IEEE) paths take smaller tiles or
more warps than tensor-core paths. Other shape classes (e.g. Ck = 256) are served but not
measured until they are added to scripts/gpu_ready/triton_shapes.py.
"""
from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Iterator

import torch

from .._thread_state import thread_local_value

INTERPRETER_ARCH = 0  # Target.arch of Triton's CPU interpreter


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a kernel runs: compute capability x 10 (80, 90, ...; 0 = the CPU interpreter), SM count."""
    arch: int
    num_sms: int

    @property
    def interpreter(self) -> bool:
        return self.arch == INTERPRETER_ARCH


INTERPRETER = Target(INTERPRETER_ARCH, 1)
# SM counts of the reference GPUs, for the AOT step's split decisions (A100 SXM, H100/H200 SXM).
REFERENCE_TARGETS = {80: Target(80, 108), 90: Target(90, 132)}

_local = threading.local()


@contextlib.contextmanager
def compile_for(target: Target) -> Iterator[None]:
    """Make the launchers choose configurations as they would on `target` (the AOT step runs
    them on CPU tensors with Triton's launch replaced by a recorder)."""
    with thread_local_value(_local, "target", target):
        yield


def target_for(device: torch.device) -> Target:
    """The target of a launch on `device`: the `compile_for` target, the CUDA device, else the interpreter."""
    forced = getattr(_local, "target", None)
    if forced is not None:
        return forced
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return Target(10 * major + minor, torch.cuda.get_device_properties(device).multi_processor_count)
    return INTERPRETER


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Tile constexprs (name -> int) and the launch options of one kernel launch."""
    constexprs: tuple[tuple[str, int], ...]
    num_warps: int = 4
    num_stages: int = 3

    def __getitem__(self, name: str) -> int:
        return dict(self.constexprs)[name]

    def launch_kwargs(self) -> dict:
        return {**dict(self.constexprs), "num_warps": self.num_warps, "num_stages": self.num_stages}


def config(num_warps: int = 4, num_stages: int = 3, **constexprs: int) -> KernelConfig:
    return KernelConfig(tuple(constexprs.items()), num_warps, num_stages)


# --- precision ----------------------------------------------------------------------------------
def dot_precision(dtype: torch.dtype) -> str:
    """`input_precision` of the kernels' tl.dot: TF32 for float32 where torch allows it, else IEEE."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"


def upcast_dots(dtype: torch.dtype, target: Target) -> bool:
    """Upcast bfloat16 dot operands to float32: the interpreter's bfloat16 tl.dot is wrong."""
    return target.interpreter and dtype == torch.bfloat16


def _fma(dtype: torch.dtype, precision: str) -> bool:
    """Whether tl.dot lowers to FMA loops (float32 in IEEE precision) rather than tensor cores."""
    return dtype == torch.float32 and precision == "ieee"


def _by_path(target: Target, dtype: torch.dtype, precision: str, *, interpreter: list, fma: list,
             tensor_cores: list) -> list:
    """The candidates for the interpreter, for FMA dots (float32 IEEE) or for tensor-core dots."""
    if target.interpreter:
        return interpreter
    return fma if _fma(dtype, precision) else tensor_cores


# --- candidate lists, one function per kernel ----------------------------------------------------
# The AOT step sees which list each launch drew from (`choose` records it while capturing).
_capture: list | None = None


@contextlib.contextmanager
def record_choices(log: list) -> Iterator[None]:
    """While active, every `choose` call appends (kernel name, candidates) to `log`."""
    global _capture
    previous, _capture = _capture, log
    try:
        yield
    finally:
        _capture = previous


def choose(kernel: str, candidates: list[KernelConfig]) -> KernelConfig:
    """The configuration a launcher runs: the first candidate."""
    if not candidates:
        raise ValueError(f"{kernel}: no launch configuration")
    if _capture is not None:
        _capture.append((kernel, tuple(candidates)))
    return candidates[0]


ELEMENTWISE_BLOCK = 1024


def aggregate(target: Target) -> list[KernelConfig]:
    """soft_aggregate / min_background_aggregate, forward and backward: BLOCK pixels per program."""
    return [config(BLOCK=ELEMENTWISE_BLOCK, num_warps=4)]


MEMORY_READ_MAX_KEY_CHANNELS = 256   # Ck is held whole in registers (padded to a power of two)


def memory_read_topk_select(target: Target, dtype: torch.dtype, precision: str) -> list[KernelConfig]:
    """_topk_chunk_kernel: a (BN, CKP) query block, a (CKP, BM) key tile and a (BN, KP) k-buffer in registers."""
    return _by_path(target, dtype, precision,
                    interpreter=[config(BN=32, BM=64, num_warps=4)],
                    fma=[config(BN=32, BM=64, num_warps=8, num_stages=1)],
                    tensor_cores=[config(BN=64, BM=32, num_warps=8, num_stages=1)] + (
                        # the wider key tile spills 8 B on sm_80 (16-bit inputs, `make gpu-ready`): sm_90 only
                        [config(BN=64, BM=64, num_warps=8, num_stages=2)] if target.arch >= 90 else []))


MEMORY_READ_MAX_SPLITS = 16          # memory chunks per query block: bounds the merge's S * KP candidates
MEMORY_READ_PROGRAMS_PER_SM = 2


def memory_read_chunk(target: Target, programs: int, memory: int, block_m: int) -> int:
    """Memory positions per program of a split-M kernel (a multiple of block_m): enough chunks that
    `programs` (query blocks x batch) x chunks reach MEMORY_READ_PROGRAMS_PER_SM programs per SM,
    at most MEMORY_READ_MAX_SPLITS chunks, each at least one block_m tile."""
    wanted = -(-MEMORY_READ_PROGRAMS_PER_SM * target.num_sms // max(programs, 1))
    splits = max(1, min(wanted, MEMORY_READ_MAX_SPLITS, -(-memory // block_m)))
    tiles = -(-memory // (splits * block_m))     # block_m tiles per chunk
    return tiles * block_m


def memory_read_topk_merge(target: Target, candidates: int) -> list[KernelConfig]:
    """_topk_merge_kernel: a (BN, candidates) tile (a power of two); at most 4096 values per program."""
    return [config(BN=max(1, min(32, 4096 // candidates)), num_warps=4, num_stages=1)]


def memory_read_sparse_readout(target: Target) -> list[KernelConfig]:
    return [config(BN=32, BCV=64, num_warps=4)]


def memory_read_topk_grad_value(target: Target) -> list[KernelConfig]:
    # 32 queries x 32 channels spill 4-16 B in some arch / warps / triton-version combinations
    # (ptxas settles at 80 or 128 registers); 16 x 16 tiles sit at 64 registers, no spill.
    if target.interpreter:
        return [config(BN=32, BCV=32, num_warps=4)]
    return [config(BN=16, BCV=16, num_warps=4, num_stages=1)]


def memory_read_topk_grad_key(target: Target) -> list[KernelConfig]:
    return [config(BN=32, BCK=32, num_warps=4)]


def memory_read_dense_forward(target: Target, dtype: torch.dtype, precision: str) -> list[KernelConfig]:
    """_dense_forward_kernel: q (BN, CKP), scores (BN, BM), accumulator (BN, BCV)."""
    return _by_path(target, dtype, precision,
                    interpreter=[config(BN=32, BM=64, BCV=64, num_warps=4)],
                    fma=[config(BN=32, BM=32, BCV=64, num_warps=4, num_stages=1)],
                    tensor_cores=[config(BN=64, BM=32, BCV=64, num_warps=8, num_stages=2),
                                  config(BN=32, BM=32, BCV=64, num_warps=4, num_stages=1)])


def memory_read_dense_backward(target: Target, dtype: torch.dtype, precision: str) -> list[KernelConfig]:
    """_dense_grad_key_kernel and _dense_grad_value_kernel (one config for both: they share P's tiles)."""
    return _by_path(target, dtype, precision,
                    interpreter=[config(BN=32, BM=32, BCV=64, num_warps=4)],
                    fma=[config(BN=16, BM=16, BCV=32, num_warps=4, num_stages=1)],
                    tensor_cores=[config(BN=32, BM=32, BCV=32, num_warps=8, num_stages=1),
                                  config(BN=16, BM=32, BCV=32, num_warps=4, num_stages=1)])


TEMPLATE_MAX_BLOCK_C = 128


def template_update_forward(target: Target, dtype: torch.dtype, precision: str, block_n: int,
                            block_c: int) -> list[KernelConfig]:
    """_template_update_fwd_kernel: a (BLOCK_N, BLOCK_C) accumulator over BLOCK_P steps of P.

    block_n, block_c: the output tile, powers of two covering Nt (<= 64) and Ct (<= 128).
    """
    if target.interpreter:
        return [config(BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_P=32 if dtype == torch.float32 else 64)]
    if _fma(dtype, precision):
        return [config(BLOCK_N=min(block_n, 32), BLOCK_C=block_c, BLOCK_P=16, num_warps=8),
                config(BLOCK_N=min(block_n, 16), BLOCK_C=block_c, BLOCK_P=16, num_warps=4)]
    if dtype == torch.float32:   # TF32
        return [config(BLOCK_N=min(block_n, 32), BLOCK_C=block_c, BLOCK_P=32, num_warps=8, num_stages=3),
                config(BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_P=16, num_warps=8, num_stages=3)]
    return [config(BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_P=64, num_warps=8, num_stages=3),
            config(BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_P=32, num_warps=8, num_stages=3)]


def template_update_backward_scores(target: Target, block_n: int, block_c: int) -> list[KernelConfig]:
    """_template_update_bwd_scores_kernel (elementwise over rows of BLOCK_C columns; BLOCK_N*BLOCK_C <= 4096)."""
    return [config(BLOCK_N=block_n, BLOCK_C=block_c, num_warps=4 if target.interpreter else 8)]


WINDOW_MAX_TOKENS = 256   # a whole window's keys are held on chip


def window_attention_forward(target: Target, dtype: torch.dtype, precision: str, block_n: int,
                             d: int) -> list[KernelConfig]:
    """_cwa_fwd_kernel: a (BLOCK_M, BLOCK_N) score tile over all keys of a window; the head dim in
    chunks of BLOCK_D (d <= BLOCK_D: one chunk). block_n: the window's tokens as a power of two."""
    dp = max(16, _next_pow2(d))
    small = config(BLOCK_M=min(16, block_n), BLOCK_D=min(dp, 16), num_warps=4, num_stages=1)
    # S, P and the bias indices of a (BLOCK_M, BLOCK_N = 128) tile take most of the registers:
    # 64-row tiles reach 255 registers (and spill with triton 3.9), 32 rows stay under.
    return _by_path(target, dtype, precision,
                    interpreter=[config(BLOCK_M=min(64, block_n), BLOCK_D=min(dp, 128), num_warps=4)],
                    fma=[small],
                    tensor_cores=[config(BLOCK_M=min(32, block_n), BLOCK_D=min(dp, 32), num_warps=4, num_stages=1),
                                  small])


def window_attention_backward(target: Target, dtype: torch.dtype, precision: str, block_n: int,
                              d: int) -> list[KernelConfig]:
    """_cwa_bwd_kernel: K, V, dK, dV chunks (BLOCK_N, BLOCK_D) on chip, query blocks of BLOCK_M."""
    dp = max(16, _next_pow2(d))
    tile = {"BLOCK_M": min(32, block_n), "BLOCK_D": min(dp, 32)}
    return _by_path(target, dtype, precision,
                    interpreter=[config(BLOCK_M=min(32, block_n), BLOCK_D=min(dp, 128), num_warps=8)],
                    fma=[config(BLOCK_M=min(16, block_n), BLOCK_D=min(dp, 16), num_warps=8, num_stages=1)],
                    tensor_cores=[config(num_warps=8, num_stages=1, **tile), config(num_warps=8, num_stages=3, **tile)])


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()




# Backward kernels that spill (at most 256 bytes), and why; the AOT step lists and checks them.
BACKWARD_SPILL_REASONS: dict[str, str] = {
    "_cwa_bwd_kernel": (
        "float32 IEEE (FMA) dots only, seen on sm_80 with triton 3.9 (none with triton 3.6, none on sm_90): "
        "a program keeps the K, dK and dV chunks of all 128 window positions and the (16 x 128) S, P, dP, dS "
        "tiles live, and ptxas at 255 registers spills under 256 B; smaller tiles are not possible "
        "(tl.dot needs 16 x 16 operands, and BLOCK_N is the whole window)"),
}
