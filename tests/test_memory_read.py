"""memory_read (docs/ops.md §1): the shared op tester (tests/op_tester.py) on every backend, plus
what is particular to this op: ties, NaN queries, the dense kernels' blocking, the fused ops."""
from __future__ import annotations

import math

import pytest
import torch

import vos_kernels
from kernel_utils import backend_params, device_of
from op_tester import OpTester
from vos_kernels import _library
from vos_kernels.reference.memory_read import memory_read_reference

memory_read_topk_op = torch.ops.vos_kernels.memory_read_topk.default
memory_read_dense_op = torch.ops.vos_kernels.memory_read_dense.default
needs_cpu_kernels = pytest.mark.skipif(not _library.EXTENSION_LOADED, reason=_library.EXTENSION_STATUS)
FUSED_BACKENDS = backend_params(("cpu", "triton"))
_SMALL = ((1, 4, 9), (1, 4, 12), (1, 3, 12))


def _bad(shapes, dtypes=(torch.float32,) * 3):
    return tuple(torch.randn(shape).to(dtype) for shape, dtype in zip(shapes, dtypes))


class TestMemoryRead(OpTester):
    op = "memory_read"
    backends = ("cpu", "triton", "reference")
    # (B, Ck, N, M, Cv, top_k): odd sizes, N = 1, M = 1, k = 1, k = M, k > M, dense, several tiles
    cases = [(1, 7, 97, 53, 5, 4), (2, 5, 1, 33, 3, 2), (1, 3, 13, 1, 2, 1), (2, 9, 29, 40, 6, 1),
             (1, 6, 31, 17, 4, 17), (2, 4, 23, 11, 3, 50), (1, 8, 41, 37, 7, None),
             (1, 16, 130, 1300, 9, 20), (1, 16, 130, 1300, 9, None),   # more than one memory tile and query block
             (2, 5, 37, 50, 7, 3), (1, 20, 40, 130, 9, 20), (1, 20, 40, 130, 9, None)]
    interpreted_cases = [(2, 5, 37, 50, 7, 3), (2, 5, 1, 33, 3, 2), (1, 3, 13, 1, 2, 1), (1, 6, 31, 17, 4, 17),
                         (2, 4, 23, 11, 3, 50), (1, 20, 40, 130, 9, 20), (1, 20, 40, 130, 9, None)]
    dtype_case = (2, 16, 45, 70, 6, 5)
    low_precision_atol = {torch.float16: 1e-3, torch.bfloat16: 1e-3}
    grad_cases = [(2, 8, 37, 45, 6, 1), (2, 8, 37, 45, 6, 5), (2, 8, 37, 45, 6, None)]
    bad_inputs = [
        (_bad(((1, 4, 9), (1, 4, 12), (1, 3))), {}, ValueError, "memory_value must have 3 dimensions"),
        (_bad(((1, 4, 9), (1, 5, 12), (1, 3, 12))), {}, ValueError, "memory_key must have Ck = 4"),
        (_bad(((1, 4, 9), (1, 4, 12), (1, 3, 11))), {}, ValueError, "memory_value must have M = 12"),
        (_bad(((1, 4, 9), (2, 4, 12), (1, 3, 12))), {}, ValueError, "batch sizes differ"),
        (_bad(((1, 4, 9), (1, 4, 0), (1, 3, 0))), {}, ValueError, "the memory is empty"),
        (_bad(_SMALL), {"top_k": 0}, ValueError, "top_k must be >= 1, got 0"),
        (_bad(_SMALL), {"top_k": True}, TypeError, "top_k must be an int, got bool"),
        (_bad(_SMALL), {"scale": -1.0}, ValueError, "scale must be > 0"),
        (_bad(_SMALL), {"backend": "cuda"}, NotImplementedError, "backend 'cuda' is not"),
        (_bad(_SMALL), {"backend": "gpu"}, ValueError, "backend must be one of"),
        (_bad(_SMALL, (torch.float64, torch.float32, torch.float64)), {}, TypeError,
         "memory_key must have the same dtype as query_key"),
        (_bad(_SMALL, (torch.int64, torch.int64, torch.int64)), {}, TypeError, "query_key must have a floating dtype"),
    ]

    def make_case(self, shape, seed=0):
        *dims, k = shape
        return tuple(make_inputs(*dims, seed=seed)), {"top_k": k}

    def call(self, tensors, options, backend):
        return vos_kernels.memory_read(*tensors, backend=backend, **options)

    def reference(self, tensors, options):
        return memory_read_reference(*tensors, **options)

    def schema_args(self, tensors, options, backend):
        return tensors, {**options, "backend": backend}

    def non_contiguous_cases(self, device):
        qk, mk, mv = (t.float().to(device) for t in make_inputs(2, 6, 21, 30, 5))
        # permuted storage and strided slices: (B, N, Ck)^T, every other memory entry, (B, M, Cv)^T
        views = (qk.transpose(1, 2).contiguous().transpose(1, 2),
                 torch.stack([mk, torch.full_like(mk, float("nan"))], dim=-1)[..., 0],
                 mv.transpose(1, 2).contiguous().transpose(1, 2))
        return [(views, {"top_k": 3}), (views, {"top_k": None})]

    def compile_cases(self):
        return [(tuple(make_inputs(*dims)), {"top_k": 5}) for dims in [(2, 6, 17, 23, 4), (3, 6, 19, 29, 12)]]



def make_inputs(b, ck, n, m, cv, dtype=torch.float64, seed=0, magnitude=1.0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(shape, generator=gen, dtype=torch.float64) * magnitude
               for shape in ((b, ck, n), (b, ck, m), (b, cv, m))]
    return [t.to(dtype).requires_grad_(requires_grad) for t in tensors]


def stable_topk_reference(qk, mk, mv, k, scale=None):
    """Loop-free float64 reference with the documented tie rule: among equal scores, lower index wins."""
    qk, mk, mv = (t.double() for t in (qk, mk, mv))
    scale = 1 / math.sqrt(qk.shape[1]) if scale is None else scale
    s = (2 * torch.bmm(mk.transpose(1, 2), qk) - mk.pow(2).sum(1).unsqueeze(2)) * scale   # (B, M, N)
    order = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :k]             # (B, k, N)
    w = torch.softmax(torch.gather(s, 1, order), dim=1)
    dense = torch.zeros_like(s).scatter(1, order, w)
    return torch.bmm(mv, dense), order.transpose(1, 2)


# Sizes around the dense kernels' blocking (csrc/cpu/memory_read_dense_kernel.cpp): forward memory
# tiles of 256 entries and query blocks of up to 1024 queries rounded up to multiples of 16 and
# split over the threads; backward blocks of 512 queries x 256 entries. Every call does enough
# work (N M Ck >= 2^18) to be split into blocks, not run as one.
DENSE_BLOCK_SHAPES = [
    (1, 4, 1041, 513, 3),   # queries 528 + 513; memory tiles 256 + 256 + 1
    (2, 5, 1000, 256, 2),   # queries 512 + 488 (rounding makes the last block short); one exact tile
    (1, 3, 1025, 255, 4),   # one entry short of a tile
    (1, 8, 97, 1537, 5),    # fewer queries than one rounded block; 7 tiles, the last of 1
]


@needs_cpu_kernels
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", DENSE_BLOCK_SHAPES, ids=str)
def test_cpu_dense_block_boundaries(shape, threads):
    """float32 (the AVX-512 exp path), forward and backward, with scores spread wide enough
    (magnitude 4: scores span > 87 per query) that many probabilities underflow to 0. Error rule:
    at most twice the float32 eager reference's error against float64, plus 1e-5."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        inputs = make_inputs(*shape, dtype=torch.float32, magnitude=4.0, seed=sum(shape), requires_grad=True)
        grad = torch.randn(shape[0], shape[4], shape[2], generator=torch.Generator().manual_seed(1))
        results = {}
        for name, dtype, backend in (("kernel", torch.float32, "cpu"), ("eager", torch.float32, "reference"),
                                     ("exact", torch.float64, "reference")):
            xs = [t.detach().to(dtype).requires_grad_() for t in inputs]
            out = vos_kernels.memory_read(*xs, backend=backend)
            results[name] = (out, *torch.autograd.grad(out, xs, grad.to(dtype)))
        for what, mine, eager, exact in zip(("out", "grad query_key", "grad memory_key", "grad memory_value"),
                                            *results.values()):
            error = (mine.double() - exact).abs().max().item()
            bound = 2 * (eager.double() - exact).abs().max().item() + 1e-5
            assert error <= bound, f"{what}: error {error:.3g} > {bound:.3g}"
    finally:
        torch.set_num_threads(previous)


@needs_cpu_kernels
def test_cpu_dense_non_contiguous_blocks():
    """Permuted and strided views at a multi-block size: the GEMMs read them in place."""
    qk, mk, mv = make_inputs(1, 6, 1041, 300, 5, dtype=torch.float32)
    qk_nc = qk.transpose(1, 2).contiguous().transpose(1, 2)
    mk_nc = torch.stack([mk, torch.full_like(mk, float("nan"))], dim=-1)[..., 0]
    mv_nc = mv.transpose(1, 2).contiguous().transpose(1, 2)
    out = vos_kernels.memory_read(qk_nc, mk_nc, mv_nc, backend="cpu")
    torch.testing.assert_close(out, vos_kernels.memory_read(qk, mk, mv, backend="cpu"), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.double(), memory_read_reference(qk.double(), mk.double(), mv.double()),
                               rtol=1e-4, atol=1e-5)


@needs_cpu_kernels
def test_cpu_ties_keep_lowest_index():
    # Small integers and a power-of-two scale: every score is exact, whatever the GEMM's order.
    gen = torch.Generator().manual_seed(3)
    qk = torch.randint(-3, 4, (1, 4, 9), generator=gen).double()
    mk = torch.randint(-3, 4, (1, 4, 6), generator=gen).double()
    mk = torch.cat([mk, mk, mk[:, :, :2]], dim=2)    # entries 6..13 repeat 0..7: tied scores
    mv = torch.randn(1, 3, 14, dtype=torch.float64, generator=gen)  # distinct values: the rule shows
    out, indices, weights = memory_read_topk_op(qk, mk, mv, 5, 0.5, "cpu")
    expected, order = stable_topk_reference(qk, mk, mv, 5, scale=0.5)
    assert torch.equal(indices, order)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    assert torch.all(weights[:, :, :-1] >= weights[:, :, 1:])  # sorted by decreasing score


@needs_cpu_kernels
def test_cpu_all_equal_scores():
    qk = torch.zeros(1, 3, 4, dtype=torch.float64)
    mk = torch.ones(1, 3, 10, dtype=torch.float64)
    mv = torch.arange(20, dtype=torch.float64).reshape(1, 2, 10)
    out, indices, weights = memory_read_topk_op(qk, mk, mv, 3, 1.0, "cpu")
    assert torch.equal(indices, torch.tensor([0, 1, 2]).expand(1, 4, 3))
    torch.testing.assert_close(out, mv[:, :, :3].mean(2, keepdim=True).expand(1, 2, 4))


@needs_cpu_kernels
@pytest.mark.parametrize("k", [1, 3, 12, None])
def test_cpu_gradcheck(k):
    inputs = make_inputs(2, 3, 5, 12, 4, requires_grad=True)
    read = lambda q, m, v: vos_kernels.memory_read(q, m, v, top_k=k, backend="cpu")  # noqa: E731
    assert torch.autograd.gradcheck(read, inputs, fast_mode=k in (1, 12))


@needs_cpu_kernels
@pytest.mark.parametrize("k", [7, None])
def test_cpu_gradients_match_reference(k):
    inputs = make_inputs(2, 16, 130, 1100, 9, dtype=torch.float32, requires_grad=True)
    ref_inputs = [t.detach().clone().requires_grad_() for t in inputs]
    grad = torch.randn(2, 9, 130)
    vos_kernels.memory_read(*inputs, top_k=k, backend="cpu").backward(grad)
    memory_read_reference(*ref_inputs, top_k=k).backward(grad)
    for mine, ref in zip(inputs, ref_inputs):
        torch.testing.assert_close(mine.grad, ref.grad, rtol=1e-4, atol=1e-5)
    # an expanded (stride-0) grad_out, as .sum() produces
    for t in inputs:
        t.grad = None
    vos_kernels.memory_read(*inputs, top_k=k, backend="cpu").sum().backward()
    expected = torch.autograd.grad(memory_read_reference(*ref_inputs, top_k=k).sum(), ref_inputs)
    for mine, ref in zip(inputs, expected):
        torch.testing.assert_close(mine.grad, ref, rtol=1e-4, atol=1e-5)


@needs_cpu_kernels
def test_cpu_objects_share_one_affinity():
    qk, mk, mv = make_inputs(1, 8, 25, 40, 12)
    stacked = vos_kernels.memory_read(qk, mk, mv, top_k=6, backend="cpu")
    per_object = [vos_kernels.memory_read(qk, mk, v, top_k=6, backend="cpu") for v in mv.split(4, dim=1)]
    torch.testing.assert_close(stacked, torch.cat(per_object, dim=1), rtol=1e-12, atol=1e-12)


@needs_cpu_kernels
def test_cpu_random_sweep():
    gen = torch.Generator().manual_seed(1234)
    for trial in range(12):
        b, ck, n, m, cv = (int(torch.randint(lo, hi, (1,), generator=gen))
                           for lo, hi in ((1, 3), (1, 20), (1, 150), (1, 300), (1, 10)))
        k = [None, 1, int(torch.randint(1, m + 3, (1,), generator=gen))][trial % 3]
        qk, mk, mv = make_inputs(b, ck, n, m, cv, seed=trial)
        scale = [None, 0.37][trial % 2]
        out = vos_kernels.memory_read(qk, mk, mv, top_k=k, scale=scale, backend="cpu")
        torch.testing.assert_close(out, memory_read_reference(qk, mk, mv, top_k=k, scale=scale),
                                   rtol=1e-9, atol=1e-9, msg=lambda msg: f"{(b, ck, n, m, cv, k)}: {msg}")


@needs_cpu_kernels
def test_composite_op_equals_public_function():
    qk, mk, mv = make_inputs(1, 4, 9, 12, 3)
    for k in (None, 2, 12, 30):
        torch.testing.assert_close(torch.ops.vos_kernels.memory_read(qk, mk, mv, top_k=k, scale=0.3),
                                   vos_kernels.memory_read(qk, mk, mv, top_k=k, scale=0.3))
        torch.testing.assert_close(torch.ops.vos_kernels.memory_read(qk, mk, mv, top_k=k, backend="reference"),
                                   memory_read_reference(qk, mk, mv, top_k=k))


def test_reference_backend_runs_everywhere():
    qk, mk, mv = make_inputs(1, 4, 9, 12, 3)
    with vos_kernels.use_backend("reference"):
        out = vos_kernels.memory_read(qk, mk, mv, top_k=2)
    torch.testing.assert_close(out, memory_read_reference(qk, mk, mv, top_k=2))


@needs_cpu_kernels
def test_cpu_kernel_checks_direct_calls():
    qk, mk, mv = make_inputs(1, 4, 9, 12, 3)
    with pytest.raises(RuntimeError, match=r"k must be in \[1, M = 12\]"):
        torch.ops.vos_kernels.memory_read_topk_forward(qk, mk, mv, 13, 0.5)
    with pytest.raises(RuntimeError, match="memory_read_dense_forward: expected query_key"):
        torch.ops.vos_kernels.memory_read_dense_forward(qk, mk[:, :3], mv, 0.5)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("which", ["topk", "dense"])
def test_fused_ops_opcheck(backend, which):
    """The fused ops themselves (the shared tester checks the public op)."""
    qk, mk, mv = (t.to(device_of(backend)).requires_grad_() for t in make_inputs(
        1, 5, 7, 9, 3, dtype=torch.float32 if backend == "triton" else torch.float64))
    tests = ("test_schema", "test_autograd_registration", "test_faketensor") if backend == "triton" else None
    kwargs = {} if tests is None else {"test_utils": tests}
    if which == "topk":
        torch.library.opcheck(memory_read_topk_op, (qk, mk, mv, 4, 0.4, backend), **kwargs)
    else:
        torch.library.opcheck(memory_read_dense_op, (qk, mk, mv, 0.4, backend), **kwargs)


@pytest.mark.parametrize("backend, magnitude, atol", [("cpu", 30.0, 1e-2), ("triton", 4.0, 1e-3)])
@pytest.mark.parametrize("k", [4, None])
def test_large_magnitudes_float16(backend, magnitude, atol, k):
    """|s| large: exp overflows unless the max is subtracted (STCN's eager code overflows here)."""
    ok, why = vos_kernels.available_backends()[backend]
    if not ok:
        pytest.skip(f"{backend}: {why}")
    qk, mk, mv = (t.to(device_of(backend)) for t in make_inputs(1, 8, 37, 45, 4, dtype=torch.float16,
                                                                 magnitude=magnitude))
    out = vos_kernels.memory_read(qk, mk, mv, top_k=k, backend=backend)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    exact = memory_read_reference(qk.double(), mk.double(), mv.double(), top_k=k)
    eager_error = (memory_read_reference(qk, mk, mv, top_k=k).double() - exact).abs().max()
    assert (out.double() - exact).abs().max() <= 2 * eager_error + atol


@pytest.mark.triton
@pytest.mark.parametrize("backend", backend_params(("triton",)))
def test_triton_ties_keep_lowest_index_like_cpu(backend):
    gen = torch.Generator().manual_seed(3)
    qk = torch.randint(-3, 4, (1, 4, 9), generator=gen).float()
    mk = torch.randint(-3, 4, (1, 4, 6), generator=gen).float()
    mk = torch.cat([mk, mk, mk[:, :, :2]], dim=2)
    mv = torch.randn(1, 3, 14, generator=gen)
    device = device_of(backend)
    out, indices, weights = memory_read_topk_op(qk.to(device), mk.to(device), mv.to(device), 5, 0.5, "triton")
    out, indices, weights = out.cpu(), indices.cpu(), weights.cpu()
    expected, order = stable_topk_reference(qk, mk, mv, 5, scale=0.5)
    assert torch.equal(indices, order)
    torch.testing.assert_close(out, expected.float(), rtol=1e-5, atol=1e-5)
    if _library.EXTENSION_LOADED:
        _, cpu_indices, cpu_weights = memory_read_topk_op(qk, mk, mv, 5, 0.5, "cpu")
        assert torch.equal(indices, cpu_indices)
        torch.testing.assert_close(weights, cpu_weights)


@pytest.mark.triton
@pytest.mark.parametrize("backend", backend_params(("triton",)))
def test_triton_nan_query_keeps_indices_inside_the_memory(backend):
    qk, mk, mv = (t.to(device_of(backend)) for t in make_inputs(1, 4, 10, 20, 3, dtype=torch.float32))
    qk[0, 1, 7] = float("nan")
    for k in (3, None):
        out = vos_kernels.memory_read(qk, mk, mv, top_k=k, backend="triton")
        assert torch.isnan(out[..., 7]).all()
        keep = [j for j in range(10) if j != 7]
        torch.testing.assert_close(out[..., keep], memory_read_reference(qk, mk, mv, top_k=k)[..., keep])
    # the saved indices stay inside the memory (the backward gathers through them)
    indices = memory_read_topk_op(qk, mk, mv, 3, 0.5, "triton")[1]
    assert indices.min() >= 0 and indices.max() < 20


@pytest.mark.triton
@pytest.mark.parametrize("backend", backend_params(("triton",)))
def test_triton_random_sweep(backend):
    gen = torch.Generator().manual_seed(99)
    for trial in range(4):
        b, ck, n, m, cv = (int(torch.randint(lo, hi, (1,), generator=gen))
                           for lo, hi in ((1, 3), (1, 20), (1, 70), (1, 90), (1, 10)))
        k = [None, 1, int(torch.randint(1, m + 3, (1,), generator=gen)), 20][trial]
        qk, mk, mv = (t.to(device_of(backend))
                      for t in make_inputs(b, ck, n, m, cv, dtype=torch.float32, seed=trial))
        out = vos_kernels.memory_read(qk, mk, mv, top_k=k, backend="triton")
        torch.testing.assert_close(out, memory_read_reference(qk, mk, mv, top_k=k), rtol=2e-5, atol=2e-5,
                                   msg=lambda msg: f"{(b, ck, n, m, cv, k)}: {msg}")


@pytest.mark.triton
@pytest.mark.parametrize("backend", backend_params(("triton",)))
def test_triton_rejects_too_many_key_channels(backend):
    qk, mk, mv = (t.to(device_of(backend)) for t in make_inputs(1, 300, 4, 5, 2, dtype=torch.float32))
    with pytest.raises(ValueError, match="at most 256 channels"):
        vos_kernels.memory_read(qk, mk, mv, top_k=2, backend="triton")
