"""memory_read on Triton with the memory axis split across programs (vos_kernels/triton/memory_read.py):
the split-M top-k (chunk kernel + merge kernel) must give the unsplit kernel's outputs: the same
indices (ties: the lower index wins, across chunks too), the same weights, NaN propagation.

Whether the launcher splits depends on the target's SM count (configs.memory_read_chunk). `sms(n)`
forces it through `configs.compile_for`: on the CPU (interpreter, one "SM" by default) and on a GPU
alike, `sms(64)` cuts the memory into chunks of one or a few BM tiles and `sms(1)` never splits.
The tensors live on the backend's device (CUDA where there is one; CPU under the interpreter)."""
from __future__ import annotations

import contextlib

import pytest
import torch

import vos_kernels
from kernel_utils import backend_params, device_of
from test_memory_read import make_inputs as _make_cpu_inputs
from test_memory_read import memory_read_topk_op, stable_topk_reference
from vos_kernels.reference.memory_read import memory_read_reference
from vos_kernels.triton import configs

pytestmark = [pytest.mark.triton, pytest.mark.parametrize("backend", backend_params(("triton",)))]
SCALE = 0.5
DEVICE = torch.device(device_of("triton"))


def _arch() -> int:
    if DEVICE.type == "cuda":
        major, minor = torch.cuda.get_device_capability(DEVICE)
        return 10 * major + minor
    return configs.INTERPRETER_ARCH


def sms(count: int) -> contextlib.AbstractContextManager:
    """Launch as on this device's architecture with `count` SMs (the split policy's input)."""
    return configs.compile_for(configs.Target(_arch(), count))


def make_inputs(*args, **kwargs):
    """test_memory_read's inputs (float64 draws from a seeded CPU generator), on the backend's device."""
    return [t.detach().to(DEVICE).requires_grad_(t.requires_grad) for t in _make_cpu_inputs(*args, **kwargs)]


@pytest.fixture
def many_sms():
    with sms(64):
        yield


def _splits(n: int, m: int) -> int:
    """How many memory chunks the top-k launcher uses for one batch item of n queries and m positions."""
    target = configs.target_for(DEVICE)
    select = configs.memory_read_topk_select(target, torch.float32, "ieee")[0]
    chunk = configs.memory_read_chunk(target, -(-n // select["BN"]), m, select["BM"])
    return -(-m // chunk)


def _check_against_reference(qk, mk, mv, k):
    """Exact indices where float32 scores cannot reorder near-ties (integer inputs); outputs within float32 tolerances."""
    out, indices, weights = memory_read_topk_op(qk, mk, mv, k, SCALE, "triton")
    expected, order = stable_topk_reference(qk, mk, mv, k, scale=SCALE)
    assert torch.equal(indices, order)
    torch.testing.assert_close(out, expected.float(), rtol=2e-5, atol=2e-5)
    return out, indices, weights


@pytest.mark.parametrize("m, k", [(300, 20), (129, 7), (64 * 5, 64), (200, 150), (65, 65)])
def test_split_equals_unsplit(backend, m, k):
    """M over several chunks, a partial last chunk (129 = 2 x 64 + 1), k = one chunk, k larger than a
    chunk's valid count (150 > 64), k = M. The split sees the very same float32 scores as one program
    scanning all of M (chunks are whole BM tiles), so the indices are equal; the weights sum the same
    k values in another order (a few ulps). The output is also checked against the float64 reference."""
    qk, mk, mv = make_inputs(2, 6, 37, m, 5, dtype=torch.float32, seed=m + k)
    with sms(1):
        assert _splits(37, m) == 1
        _, whole_i, whole_w = memory_read_topk_op(qk, mk, mv, k, SCALE, "triton")
    with sms(64):
        assert _splits(37, m) > 1
        out, split_i, split_w = memory_read_topk_op(qk, mk, mv, k, SCALE, "triton")
    assert torch.equal(split_i, whole_i)
    torch.testing.assert_close(split_w, whole_w, rtol=1e-6, atol=1e-7)
    expected, _ = stable_topk_reference(qk, mk, mv, k, scale=SCALE)
    torch.testing.assert_close(out, expected.float(), rtol=2e-5, atol=2e-5)


def test_split_ties_across_chunks_keep_lowest_index(backend, many_sms):
    """Memory keys repeated in every chunk: equal scores in several chunks, the lower index must win."""
    gen = torch.Generator().manual_seed(11)
    qk = torch.randint(-3, 4, (1, 4, 9), generator=gen).float().to(DEVICE)
    base = torch.randint(-3, 4, (1, 4, 64), generator=gen).float()
    mk = torch.cat([base, base, base, base[:, :, :10]], dim=2).to(DEVICE)  # 202 positions, chunks of 64
    mv = torch.randn(1, 3, mk.shape[2], generator=gen).to(DEVICE)
    assert _splits(9, mk.shape[2]) > 1
    for k in (5, 70, 130):
        _check_against_reference(qk, mk, mv, k)


def test_split_all_equal_scores(backend, many_sms):
    """Every score equal: the k lowest indices, in order, with uniform weights."""
    qk = torch.zeros(1, 4, 5, device=DEVICE)
    mk = torch.zeros(1, 4, 200, device=DEVICE)
    mv = torch.randn(1, 3, 200).to(DEVICE)
    _, indices, weights = _check_against_reference(qk, mk, mv, 90)
    assert torch.equal(indices[0, 0], torch.arange(90, device=DEVICE))
    torch.testing.assert_close(weights, torch.full_like(weights, 1 / 90))


def test_split_nan_in_one_chunk(backend, many_sms):
    """A NaN memory key in the last chunk makes every query's weights NaN (docs/ops.md: NaN propagates);
    a NaN query only its own; indices stay inside the memory."""
    qk, mk, mv = make_inputs(1, 4, 10, 200, 3, dtype=torch.float32, seed=2)
    mk[0, 2, 190] = float("nan")
    out, indices, weights = memory_read_topk_op(qk, mk, mv, 6, SCALE, "triton")
    assert torch.isnan(weights).all() and torch.isnan(out).all()
    assert indices.min() >= 0 and indices.max() < 200
    qk2, mk2, mv2 = make_inputs(1, 4, 10, 200, 3, dtype=torch.float32, seed=2)
    qk2[0, 1, 3] = float("nan")
    out2, indices2, weights2 = memory_read_topk_op(qk2, mk2, mv2, 6, SCALE, "triton")
    assert torch.isnan(weights2[0, 3]).all() and not torch.isnan(weights2[0, :3]).any()
    assert indices2.min() >= 0 and indices2.max() < 200
    keep = [j for j in range(10) if j != 3]
    expected, order = stable_topk_reference(qk2[..., keep], mk2, mv2, 6, scale=SCALE)
    assert torch.equal(indices2[:, keep], order)
    torch.testing.assert_close(out2[..., keep], expected.float(), rtol=2e-5, atol=2e-5)


def test_split_gradients_match_reference(backend, many_sms):
    qk, mk, mv = make_inputs(1, 5, 21, 150, 4, dtype=torch.float32, seed=7, requires_grad=True)
    g = torch.randn(1, 4, 21, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    got = torch.autograd.grad(vos_kernels.memory_read(qk, mk, mv, top_k=9, backend="triton"), (qk, mk, mv), g)
    want = torch.autograd.grad(memory_read_reference(qk, mk, mv, top_k=9), (qk, mk, mv), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
