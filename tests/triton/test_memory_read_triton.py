"""memory_read's Triton kernels under the CPU interpreter (TRITON_INTERPRET=1), tiny shapes.

bfloat16 is not tested here: the interpreter's tl.dot on bfloat16 is broken (testing.md); it is
a GPU-only check.
"""
from __future__ import annotations

import os

import pytest
import torch

# Must be set before triton is imported (this folder's conftest does the same).
os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

import vos_kernels  # noqa: E402
from vos_kernels import _library  # noqa: E402
memory_read_topk_op = torch.ops.vos_kernels.memory_read_topk.default
memory_read_dense_op = torch.ops.vos_kernels.memory_read_dense.default  # noqa: E402
from vos_kernels.reference.memory_read import memory_read_reference  # noqa: E402
from tests.test_memory_read import make_inputs, stable_topk_reference  # noqa: E402

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(not _library.backend_status("triton")[0], reason=_library.backend_status("triton")[1]),
]

# (B, Ck, N, M, Cv, top_k): N = 1, M = 1, k = 1, k = M, k > M, dense, more than one tile/block.
SHAPES = [
    (2, 5, 37, 50, 7, 3),
    (1, 3, 1, 1, 2, 1),
    (1, 6, 9, 17, 4, 17),
    (2, 4, 33, 11, 3, 50),
    (1, 20, 40, 130, 9, 20),
    (1, 20, 40, 130, 9, None),
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_triton_matches_reference(shape):
    *dims, k = shape
    qk, mk, mv = make_inputs(*dims, dtype=torch.float32)
    out = vos_kernels.memory_read(qk, mk, mv, top_k=k, backend="triton")
    assert out.dtype == torch.float32 and out.is_contiguous()
    torch.testing.assert_close(out, memory_read_reference(qk, mk, mv, top_k=k), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("k", [4, None])
def test_triton_float16_within_twice_eager_error(k):
    qk, mk, mv = make_inputs(1, 16, 33, 70, 6, dtype=torch.float16, magnitude=4.0)  # large |s|: max subtracted
    out = vos_kernels.memory_read(qk, mk, mv, top_k=k, backend="triton")
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    exact = memory_read_reference(qk.double(), mk.double(), mv.double(), top_k=k)
    eager_error = (memory_read_reference(qk, mk, mv, top_k=k).double() - exact).abs().max()
    assert (out.double() - exact).abs().max() <= 2 * eager_error + 1e-3


@pytest.mark.parametrize("k", [3, None])
def test_triton_non_contiguous_inputs(k):
    qk, mk, mv = make_inputs(2, 6, 21, 30, 5, dtype=torch.float32)
    qk_nc = qk.transpose(1, 2).contiguous().transpose(1, 2)
    mk_nc = torch.stack([mk, torch.full_like(mk, float("nan"))], dim=-1)[..., 0]
    mv_nc = mv.transpose(1, 2).contiguous().transpose(1, 2)
    out = vos_kernels.memory_read(qk_nc, mk_nc, mv_nc, top_k=k, backend="triton")
    torch.testing.assert_close(out, memory_read_reference(qk, mk, mv, top_k=k), rtol=2e-5, atol=2e-5)


def test_triton_ties_keep_lowest_index_like_cpu():
    gen = torch.Generator().manual_seed(3)
    qk = torch.randint(-3, 4, (1, 4, 9), generator=gen).float()
    mk = torch.randint(-3, 4, (1, 4, 6), generator=gen).float()
    mk = torch.cat([mk, mk, mk[:, :, :2]], dim=2)
    mv = torch.randn(1, 3, 14, generator=gen)
    out, indices, weights = memory_read_topk_op(qk, mk, mv, 5, 0.5, "triton")
    expected, order = stable_topk_reference(qk, mk, mv, 5, scale=0.5)
    assert torch.equal(indices, order)
    torch.testing.assert_close(out, expected.float(), rtol=1e-5, atol=1e-5)
    if _library.EXTENSION_LOADED:
        _, cpu_indices, cpu_weights = memory_read_topk_op(qk, mk, mv, 5, 0.5, "cpu")
        assert torch.equal(indices, cpu_indices)
        torch.testing.assert_close(weights, cpu_weights)


@pytest.mark.parametrize("k", [3, None])
def test_triton_nan_query_gives_nan_column(k):
    qk, mk, mv = make_inputs(1, 4, 10, 20, 3, dtype=torch.float32)
    qk[0, 1, 7] = float("nan")
    out = vos_kernels.memory_read(qk, mk, mv, top_k=k, backend="triton")
    assert torch.isnan(out[..., 7]).all()
    if k is not None:  # the saved indices stay inside the memory (the backward gathers through them)
        indices = memory_read_topk_op(qk, mk, mv, k, 0.5, "triton")[1]
        assert indices.min() >= 0 and indices.max() < 20
    keep = [j for j in range(10) if j != 7]
    torch.testing.assert_close(out[..., keep], memory_read_reference(qk, mk, mv, top_k=k)[..., keep])


@pytest.mark.parametrize("k", [1, 5, None])
def test_triton_gradients_match_reference(k):
    inputs = make_inputs(2, 8, 37, 45, 6, dtype=torch.float32, requires_grad=True)
    ref_inputs = [t.detach().clone().requires_grad_() for t in inputs]
    grad = torch.randn(2, 6, 37)
    vos_kernels.memory_read(*inputs, top_k=k, backend="triton").backward(grad)
    memory_read_reference(*ref_inputs, top_k=k).backward(grad)
    for mine, ref in zip(inputs, ref_inputs):
        torch.testing.assert_close(mine.grad, ref.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("which", ["topk", "dense"])
def test_triton_opcheck(which):
    qk, mk, mv = make_inputs(1, 5, 7, 9, 3, dtype=torch.float32, requires_grad=True)
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")  # aot_dispatch: too slow here
    if which == "topk":
        torch.library.opcheck(memory_read_topk_op, (qk, mk, mv, 4, 0.4, "triton"), test_utils=tests)
    else:
        torch.library.opcheck(memory_read_dense_op, (qk, mk, mv, 0.4, "triton"), test_utils=tests)


def test_triton_random_sweep():
    gen = torch.Generator().manual_seed(99)
    for trial in range(4):
        b, ck, n, m, cv = (int(torch.randint(lo, hi, (1,), generator=gen))
                           for lo, hi in ((1, 3), (1, 20), (1, 70), (1, 90), (1, 10)))
        k = [None, 1, int(torch.randint(1, m + 3, (1,), generator=gen)), 20][trial]
        qk, mk, mv = make_inputs(b, ck, n, m, cv, dtype=torch.float32, seed=trial)
        out = vos_kernels.memory_read(qk, mk, mv, top_k=k, backend="triton")
        torch.testing.assert_close(out, memory_read_reference(qk, mk, mv, top_k=k), rtol=2e-5, atol=2e-5,
                                   msg=lambda msg: f"{(b, ck, n, m, cv, k)}: {msg}")


def test_triton_rejects_too_many_key_channels():
    qk, mk, mv = make_inputs(1, 300, 4, 5, 2, dtype=torch.float32)
    with pytest.raises(ValueError, match="at most 256 channels"):
        vos_kernels.memory_read(qk, mk, mv, top_k=2, backend="triton")
