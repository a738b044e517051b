"""Facts about an installed vos_kernels, as JSON on stdout; run inside the gpu-ready venv.

    python scripts/gpu_ready/probe.py      (with the CUDA build first on PYTHONPATH)

No GPU is needed. It records: where vos_kernels was imported from and whether that failed;
_compiled_with_cuda(); every vos_kernels:: op of the dispatcher with its CPU and CUDA kernels
(a direct CUDA kernel, or a CompositeExplicitAutograd one that serves CUDA); for each C++ kernel
the public op it belongs to, that op's backends and, when it has no CUDA kernel, whether the
Triton launcher `<kernel>_triton` exists; the backend that `auto` picks for CUDA tensors on a
machine where every backend is available (the dispatch code asked with backend_status patched,
since no GPU is here); the CUDA kernels' dynamic shared memory at a representative shape.
"""
from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from unittest import mock

# clip_window_attention's representative launch: the PCVOS ICR case of the README's benchmark
# (window (2, 7, 7), C = 256 over 8 heads, so head dim 32).
SHARED_CASE = {"window": (2, 7, 7), "head_dim": 32}


def public_ops(vos_kernels) -> dict[str, dict]:
    """OP name -> {module, implemented backends} of every vos_kernels.ops module."""
    found = {}
    for info in pkgutil.iter_modules(vos_kernels.ops.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"vos_kernels.ops.{info.name}")
        # Each public ops module is named after its op (the op layer declares it once there).
        implemented = getattr(module, "IMPLEMENTED", ("cpu", "cuda", "triton", "reference"))
        found[getattr(module, "OP", info.name)] = {"module": module.__name__, "implemented": list(implemented)}
    return found


def owner(op_name: str, publics: dict[str, dict]) -> str | None:
    """The public op a dispatcher op belongs to: the longest public name it starts with."""
    matches = [name for name in publics if op_name == name or op_name.startswith(name + "_")]
    return max(matches, key=len) if matches else None


def dispatcher_ops(torch, publics: dict[str, dict]) -> list[dict]:
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    rows = []
    for qualified in sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("vos_kernels::")):
        name = qualified.split("::", 1)[1]
        rows.append({"name": qualified, "cpu": has(qualified, "CPU"), "cuda": has(qualified, "CUDA"),
                     "composite": has(qualified, "CompositeExplicitAutograd"), "public_op": owner(name, publics)})
    return rows


def triton_launchers(rows: list[dict], publics: dict[str, dict]) -> None:
    """For a C++ kernel without a CUDA kernel: does vos_kernels.triton.<op> have `<kernel>_triton`?"""
    for row in rows:
        op = row["public_op"]
        if not row["cpu"] or row["cuda"] or row["composite"] or op is None:
            continue
        try:
            module = importlib.import_module(f"vos_kernels.triton.{op}")
            row["triton_launcher"] = callable(getattr(module, row["name"].split("::")[1] + "_triton", None))
        except Exception as exc:  # triton missing or broken: recorded, judged by the rules
            row["triton_launcher"] = False
            row["triton_error"] = f"{type(exc).__name__}: {exc}"


def gpu_routes(torch, publics: dict[str, dict]) -> dict[str, str]:
    """The backend `auto` picks for CUDA tensors of each op, as on a GPU machine with every backend."""
    from vos_kernels import _dispatch

    routes = {}
    with mock.patch.object(_dispatch, "backend_status", lambda name: (True, "assumed available (GPU machine)")):
        for op, info in publics.items():
            routes[op] = _dispatch.resolve_backend(op, None, torch.device("cuda"), info["implemented"])
    return routes


def dynamic_shared(torch) -> list[dict]:
    """clip_window_attention's dynamic shared memory per block at SHARED_CASE, per accumulator size."""
    fn = getattr(torch.ops.vos_kernels, "_clip_window_attention_cuda_shared_bytes", None)
    if fn is None:
        return []
    # The Python mirror that "auto" uses to route windows too large for the CUDA kernel to Triton.
    from vos_kernels.ops.clip_window_attention import cuda_shared_bytes
    t, h, w = SHARED_CASE["window"]
    tokens, rows = t * h * w, (2 * t - 1) * (2 * h - 1) * (2 * w - 1)
    out = []
    for direction in ("forward", "backward"):
        for acc_bytes in (4, 8):
            out.append({"kernel": f"clip_window_attention_{direction}_kernel", "acc_bytes": acc_bytes,
                        "bytes": int(fn(direction == "backward", acc_bytes, tokens, SHARED_CASE["head_dim"], rows)),
                        "python_bytes": cuda_shared_bytes(direction == "backward", acc_bytes, tokens,
                                                          SHARED_CASE["head_dim"], rows),
                        "case": f"window {t}x{h}x{w}, head dim {SHARED_CASE['head_dim']}"})
    return out


def collect() -> dict:
    facts: dict = {"python": sys.executable}
    try:
        import torch
        facts.update(torch=torch.__version__, cuda=torch.version.cuda)
        import vos_kernels
        from vos_kernels import _library
    except Exception as exc:
        facts["import_error"] = f"{type(exc).__name__}: {exc}"
        return facts
    facts["vos_kernels_file"] = vos_kernels.__file__
    if not _library.EXTENSION_LOADED:
        facts["import_error"] = _library.EXTENSION_STATUS
        return facts
    facts["compiled_with_cuda"] = bool(torch.ops.vos_kernels._compiled_with_cuda())
    publics = public_ops(vos_kernels)
    facts["public_ops"] = publics
    facts["ops"] = dispatcher_ops(torch, publics)
    triton_launchers(facts["ops"], publics)
    facts["routes"] = gpu_routes(torch, publics)
    facts["dynamic_shared"] = dynamic_shared(torch)
    return facts


if __name__ == "__main__":
    print(json.dumps(collect()))
