"""Triton kernels under the CPU interpreter: head dims above one chunk (PCVOS's d = 512), bfloat16
through the interpreter's upcast dots, and float32 dot precision following torch's setting.

The interpreter must be on before triton is imported (tests/conftest.py sets TRITON_INTERPRET=1
when there is no GPU); on a GPU the same tests run on CUDA tensors.
"""
from __future__ import annotations

import pytest
import torch

import vos_kernels
from vos_kernels.reference.clip_window_attention import clip_window_attention_reference
from vos_kernels.reference.memory_read import memory_read_reference

ok, why = vos_kernels.available_backends()["triton"]
pytestmark = [pytest.mark.triton, pytest.mark.skipif(not ok, reason=f"triton: {why}")]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _window_inputs(shape, heads, window, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))
    rows = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
    return q, k, v, torch.randn(rows, heads, generator=g, dtype=torch.float64)


# d = 160: one full 128-channel chunk and a partial one under the interpreter; d = 512: PCVOS's ICR
@pytest.mark.parametrize("shape, heads, window, shift", [((1, 2, 3, 4, 160), 1, (2, 3, 3), (1, 1, 1)),
                                                         ((2, 2, 3, 3, 1024), 2, (2, 3, 3), (0, 0, 0))])
def test_window_attention_head_dims_above_one_chunk(shape, heads, window, shift):
    tensors = _window_inputs(shape, heads, window)
    grad_out = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    leaves = [t.clone().requires_grad_() for t in tensors]
    ref = clip_window_attention_reference(*leaves[:3], heads, window, shift, leaves[3])
    ref_grads = torch.autograd.grad(ref, leaves, grad_out)
    fused_leaves = [t.to(DEVICE, torch.float32).requires_grad_() for t in tensors]
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")      # IEEE dots: compare at float32 accuracy
    try:
        out = vos_kernels.clip_window_attention(*fused_leaves[:3], num_heads=heads, window=window, shift=shift,
                                                rel_pos_bias=fused_leaves[3], backend="triton")
        grads = torch.autograd.grad(out, fused_leaves, grad_out.to(DEVICE, torch.float32))
    finally:
        torch.set_float32_matmul_precision(previous)
    # float32 sums over up to 1024 channels and 18 keys of O(1) terms: 1e-4 covers their rounding
    torch.testing.assert_close(out.double().cpu(), ref.detach(), rtol=1e-4, atol=1e-4)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double().cpu(), want, rtol=1e-4, atol=1e-4)


def _low_precision_error_bound(exact, eager_low):
    """The flash-attention rule: at most twice the eager low-precision error, plus a small absolute term."""
    return 2 * (eager_low.double() - exact).abs().max().item() + 1e-2


def test_window_attention_bfloat16_matches_reference():
    shape, heads, window, shift = (1, 2, 4, 5, 32), 2, (2, 3, 3), (1, 1, 1)
    q, k, v, table = _window_inputs(shape, heads, window)
    exact = clip_window_attention_reference(q, k, v, heads, window, shift, table)
    low = [t.to(torch.bfloat16) for t in (q, k, v)]
    eager = clip_window_attention_reference(*low, heads, window, shift, table.to(torch.bfloat16))
    out = vos_kernels.clip_window_attention(*(t.to(DEVICE) for t in low), num_heads=heads, window=window,
                                            shift=shift, rel_pos_bias=table.to(DEVICE, torch.bfloat16),
                                            backend="triton")
    assert out.dtype == torch.bfloat16
    assert (out.double().cpu() - exact).abs().max().item() <= _low_precision_error_bound(exact, eager)


@pytest.mark.parametrize("top_k", [None, 5])
def test_memory_read_bfloat16_matches_reference(top_k):
    g = torch.Generator().manual_seed(0)
    qk, mk, mv = (torch.randn(1, 16, 40, generator=g, dtype=torch.float64),
                  torch.randn(1, 16, 70, generator=g, dtype=torch.float64),
                  torch.randn(1, 8, 70, generator=g, dtype=torch.float64))
    exact = memory_read_reference(qk, mk, mv, top_k=top_k)
    low = [t.to(torch.bfloat16) for t in (qk, mk, mv)]
    eager = memory_read_reference(*low, top_k=top_k)
    out = vos_kernels.memory_read(*(t.to(DEVICE) for t in low), top_k=top_k, backend="triton")
    assert out.dtype == torch.bfloat16
    if top_k is None:
        assert (out.double().cpu() - exact).abs().max().item() <= _low_precision_error_bound(exact, eager)
    else:
        # top-k on rounded scores may keep other entries than the exact read; compare with the eager
        # bfloat16 read, which ranks the same rounded inputs (scores in float32 on both sides)
        torch.testing.assert_close(out.double().cpu(), eager.double(), rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("precision, expected", [("highest", "ieee"), ("high", "tf32"), ("medium", "tf32")])
def test_float32_dots_follow_torch_matmul_precision(precision, expected):
    from vos_kernels.triton import configs
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        assert configs.dot_precision(torch.float32) == expected
        assert configs.dot_precision(torch.bfloat16) == "ieee"     # 16-bit operands: tensor cores either way
    finally:
        torch.set_float32_matmul_precision(previous)


def test_interpreter_has_one_config_per_launch_and_upcasts_only_bfloat16():
    from vos_kernels.triton import configs
    t = configs.INTERPRETER
    for candidates in (configs.memory_read_topk_select(t, torch.float32, "ieee"),
                       configs.memory_read_dense_forward(t, torch.float16, "ieee"),
                       configs.memory_read_dense_backward(t, torch.float32, "tf32"),
                       configs.template_update_forward(t, torch.float32, "ieee", 64, 128),
                       configs.window_attention_forward(t, torch.bfloat16, "ieee", 128, 512),
                       configs.window_attention_backward(t, torch.float32, "ieee", 128, 32)):
        assert len(candidates) == 1
    assert configs.upcast_dots(torch.bfloat16, t) and not configs.upcast_dots(torch.float16, t)
    assert not configs.upcast_dots(torch.bfloat16, configs.REFERENCE_TARGETS[90])
