"""On a CUDA device, every model's real 480p calls are served by a fused kernel, not the reference.

Asked without a GPU through `vos_kernels._dispatch.would_serve`, with the shapes of
scripts/gpu_ready/triton_shapes.py (the four models' default dims, read from vos_models), for
the two CUDA set-ups: the extension built with its CUDA kernels (cuda, then triton) and
without them (triton only, e.g. a wheel built where nvcc was missing).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from vos_kernels._dispatch import would_serve

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "gpu_ready"))
import triton_shapes  # noqa: E402

SETUPS = {"cuda+triton": ("cuda", "triton"), "triton only": ("triton",)}
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@pytest.fixture(scope="module")
def model_launches():
    return triton_shapes.model_launches()


def test_model_dims_are_the_defaults_that_issue_21_names():
    dims = triton_shapes.model_dims()["pcvos"]
    # PCVOS's ICR: one head over the 512-wide value stream (q/k widened to it), window (2, 7, 7)
    assert (dims["heads"], max(dims["qk_dim"], dims["v_dim"]), dims["window"]) == (1, 512, (2, 7, 7))
    assert (dims["key_dim"], dims["top_k"]) == (64, 20)


@pytest.mark.parametrize("setup", SETUPS)
def test_every_model_shape_is_served_fused_on_cuda(model_launches, setup):
    ops = set()
    for launch in model_launches:
        for dtype in DTYPES:
            backend, why_not = would_serve(launch.op, "cuda", SETUPS[setup],
                                           **triton_shapes.shape_kwargs(launch, dtype))
            assert backend in ("cuda", "triton"), (launch, dtype, backend)
            assert why_not is None, (launch, dtype, why_not)
            ops.add(launch.op)
    assert ops == {"soft_aggregate", "min_background_aggregate", "memory_read", "template_update",
                   "clip_window_attention"}


def test_pcvos_window_attention_reaches_triton_with_head_dim_512(model_launches):
    icr = [lau for lau in model_launches if lau.op == "clip_window_attention"]
    assert icr and all(lau.sizes["channels"] // lau.sizes["heads"] == 512 for lau in icr)
    for launch in icr:
        assert would_serve("clip_window_attention", "cuda", ("triton",),
                           **triton_shapes.shape_kwargs(launch, torch.float32)) == ("triton", None)


def test_would_serve_reports_limits_and_missing_backends():
    backend, why = would_serve("memory_read", "cuda", ("cuda", "triton"), key_dim=512, dtype=torch.float32)
    assert backend == "triton" and "Ck <= 256, got 512" in why
    backend, why = would_serve("clip_window_attention", "cuda", ("triton",), window=(4, 9, 9), head_dim=32)
    assert backend == "triton" and "324 tokens" in why
    # memory_read has no CUDA kernel: without triton, "auto" falls back to the reference
    assert would_serve("memory_read", "cuda", ("cuda",), key_dim=64) == ("reference", None)
    assert would_serve("soft_aggregate", "cuda", ("cuda", "triton")) == ("cuda", None)


def test_window_attention_too_large_for_cuda_shared_memory_is_routed_to_triton():
    from vos_kernels.ops import clip_window_attention as cwa

    # PCVOS: 98 tokens at head dim 512 need 4 * (2*98*512 + 2*64*512) + 4*98 bytes forward
    assert cwa.cuda_shared_bytes(False, 4, 98, 512, 507) == 4 * (2 * 98 * 512 + 2 * 64 * 512) + 4 * 98
    why = cwa.cuda_unsupported(window=(2, 7, 7), head_dim=512, dtype=torch.float32)
    assert why is not None and "663944 bytes" in why
    # Swin-sized heads fit on every target, forward and backward
    assert cwa.cuda_unsupported(window=(2, 7, 7), head_dim=32, dtype=torch.float32, backward=True) is None
    assert would_serve("clip_window_attention", "cuda", ("cuda", "triton"), window=(2, 7, 7), head_dim=512) \
        == ("triton", None)
    assert would_serve("clip_window_attention", "cuda", ("cuda", "triton"), window=(2, 7, 7), head_dim=32) \
        == ("cuda", None)
    # without Triton the CUDA kernel is the only fused choice, and would_serve says why it fails
    backend, why = would_serve("clip_window_attention", "cuda", ("cuda",), window=(2, 7, 7), head_dim=512)
    assert backend == "cuda" and "shared memory" in why


def test_window_attention_preference_counts_the_backward_pass(monkeypatch):
    """The op's own routing on CUDA tensors (faked: no GPU here), forward-only and with gradients."""
    from types import SimpleNamespace

    from vos_kernels.ops import clip_window_attention as cwa

    monkeypatch.setattr(cwa, "_shared_memory_optin", lambda index: 232448)  # H100/H200
    def tensor(channels, requires_grad=False):
        return SimpleNamespace(device=torch.device("cuda", 0), shape=(1, 2, 14, 14, channels),
                               dtype=torch.float32, requires_grad=requires_grad)
    window = [2, 7, 7]
    q = tensor(512)
    assert cwa._preference(q, q, q, None, 1, window, [0, 0, 0], 1.0) == {"cuda": ("triton", "cuda")}
    q = tensor(128)   # forward: 4 * (2*98*128 + 2*64*128) + 392 = 166280 B fits in 227 KB
    assert cwa._preference(q, q, q, None, 1, window, [0, 0, 0], 1.0) is None
    q = tensor(128, requires_grad=True)  # backward needs ~270 KB: Triton first
    assert cwa._preference(q, q, q, None, 1, window, [0, 0, 0], 1.0) == {"cuda": ("triton", "cuda")}
