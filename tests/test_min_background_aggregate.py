"""min_background_aggregate: the shared op tester (tests/op_tester.py) plus what is particular to this op."""
import pytest
import torch

import vos_kernels
from kernel_utils import backend_params, device_of, tolerance
from op_tester import OpTester
from vos_kernels.reference import min_background_aggregate_reference

BACKENDS = backend_params()
_Q = torch.rand(1, 2, 2, 3)


class TestMinBackgroundAggregate(OpTester):
    op = "min_background_aggregate"
    # (B, O, 2, *spatial): odd sizes, O = 1 and 5, 0 to 3 spatial dims
    cases = [(1, 1, 2), (2, 1, 2, 97), (1, 5, 2, 13, 17), (3, 2, 2, 7, 11), (2, 3, 2, 4, 5, 6), (1, 5, 2, 1620)]
    dtype_case = (2, 4, 2, 9, 13)
    grad_cases = [(2, 1, 2, 5, 9), (2, 5, 2, 5, 9)]
    bad_inputs = [
        ((torch.rand(5, 2),), {}, ValueError, "q must have at least 3 dimensions, got shape \\(5, 2\\)"),
        ((torch.rand(1, 2, 3, 4),), {}, ValueError, "dim 2 must have size 2; got shape \\(1, 2, 3, 4\\)"),
        ((torch.rand(2, 0, 2, 4),), {}, ValueError, "q must have at least one object"),
        ((torch.ones(2, 3, 2, dtype=torch.int64),), {}, TypeError, "q must have a floating dtype .* got torch.int64"),
        (([[0.5]],), {}, TypeError, "q must be a torch.Tensor, got list"),
        *(((_Q,), {"eps": eps}, ValueError, "eps must be") for eps in (0.7, 0.5, 0.0, -1e-7)),
        ((_Q,), {"backend": "fast"}, ValueError, "backend must be one of"),
    ]

    def make_case(self, shape, seed=0):
        if shape in self.grad_cases:
            q, _ = _gradient_inputs(shape[1], "cpu")
            return (q.double(),), {}
        return (_random_q(shape, dtype=torch.float64, seed=seed + len(shape)),), {}

    def call(self, tensors, options, backend):
        return vos_kernels.min_background_aggregate(tensors[0], backend=backend)

    def reference(self, tensors, options):
        return min_background_aggregate_reference(tensors[0])

    def schema_args(self, tensors, options, backend):
        return (tensors[0], 1e-7, backend), {}

    def non_contiguous_cases(self, device):
        base = _random_q((2, 12, 2, 10, 6), device=device, seed=3)
        views = [base.permute(0, 1, 2, 4, 3)[:, :5],            # spatial transposed
                 base[:, ::3, :, 1::2, :],                       # sliced objects and rows
                 base.flip(2).transpose(3, 4),                   # a reversed copy, transposed
                 _random_q((2, 3, 6, 4, 2), device=device, seed=4).transpose(2, 4)]  # dim 2 strided
        return [((v,), {}) for v in views]

    def gradcheck_cases(self):
        # away from the clamps and from ties of the minimum, where the function is smooth
        return [((_random_q((2, 3, 2, 2, 3), dtype=torch.float64).mul(0.9).add(0.05),), {})]

    def cpp_opcheck_cases(self):
        q = _random_q((2, 3, 2, 35))
        grad_out = torch.rand(2, 4, 35, generator=torch.Generator().manual_seed(1)) - 0.5
        return [("min_background_aggregate_forward", (q, 1e-7)),
                ("min_background_aggregate_backward", (grad_out, q, 1e-7))]

    def compile_cases(self):
        # no size equal to 2 but dim 2: dynamo's duck sizing would tie it to dim 2, which the
        # op's shape check specialises to 2
        return [((_random_q(shape, dtype=torch.float64),), {})
                for shape in [(3, 4, 2, 8, 9), (5, 3, 2, 7, 11), (4, 6, 2, 6, 10)]]


def _random_q(shape, dtype=torch.float32, device="cpu", seed=0):
    """A per-object two-way softmax (q[:, :, 0] + q[:, :, 1] = 1), as the models feed it."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).mul(3).softmax(dim=2).to(device=device, dtype=dtype)


def _assert_close(out, ref, dtype):
    tol = tolerance(dtype)
    torch.testing.assert_close(out.double(), ref.double(), rtol=tol, atol=tol)


def test_reference_is_the_public_formula():
    """b = min_k q_k0, odds_0 = c(b)/c(1-b), odds_k = c(q_k1)/c(q_k0), normalised."""
    q = _random_q((1, 3, 2, 4, 5), dtype=torch.float64)
    q[0, 1, :, 0, 0] = torch.tensor([0.0, 1.0], dtype=torch.float64)  # a clamp edge
    c = lambda x: x.clamp(1e-7, 1 - 1e-7)  # noqa: E731
    b = q[0, :, 0].min(dim=0).values
    odds = torch.cat([(c(b) / c(1 - b))[None], c(q[0, :, 1]) / c(q[0, :, 0])])
    out = min_background_aggregate_reference(q)
    torch.testing.assert_close(out[0], odds / odds.sum(0), rtol=1e-14, atol=0)
    # not soft_aggregate's rule (RGMP Eq. 1), even for one object
    assert (out - vos_kernels.soft_aggregate(q[:, :, 1], backend="reference")).abs().max() > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_probabilities(backend):
    device = device_of(backend)
    fg = torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.5, 1e-9, 1 - 1e-9],
                       [0.0, 0.0, 1.0, 1.0, 0.5, 1e-9, 1.0]], device=device)
    q = torch.stack([1 - fg, fg], dim=1)[None]           # (1, 2, 2, 7)
    out = vos_kernels.min_background_aggregate(q, backend=backend)
    assert torch.isfinite(out).all()
    _assert_close(out.cpu(), min_background_aggregate_reference(q.double().cpu()), torch.float32)
    assert out[0, 0, 0] > 0.999999  # no object anywhere: the background takes (almost) everything


def _grads(fn, q, grad_out):
    x = q.clone().requires_grad_()
    (grad,) = torch.autograd.grad(fn(x), x, grad_out)
    return grad.double().cpu()


def _gradient_inputs(objects, device):
    q = _random_q((2, objects, 2, 5, 9), device=device, seed=objects)
    # clamp edges (fg 0, 1, 1e-9) and, with several objects, a tie of the minimum
    q[0, :, :, 0, :3] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1 - 1e-9, 1e-9]], device=device).T[None]
    if objects > 1:
        q[1, :2, :, 2, 4] = torch.tensor([0.3, 0.7], device=device)
    g = torch.Generator().manual_seed(7)
    grad_out = (torch.rand(2, objects + 1, 5, 9, generator=g) - 0.5).to(device)
    return q, grad_out


def test_gradient_of_the_min_goes_to_the_first_minimal_object():
    q = torch.tensor([0.3, 0.7, 0.3, 0.7, 0.6, 0.4], dtype=torch.float64).view(1, 3, 2, 1)
    grad_out = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64).view(1, 4, 1)
    want = _grads(min_background_aggregate_reference, q, grad_out)
    for backend in ("cpu", "reference"):
        if vos_kernels.available_backends()[backend][0]:
            got = _grads(lambda x: vos_kernels.min_background_aggregate(x, backend=backend), q, grad_out)
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    # objects 0 and 1 are identical and tie for the minimum: only object 0, the first, gets the
    # min's share on q_k0; their q_k1 gradients are equal
    assert (want[0, 0, 0] - want[0, 1, 0]).abs().item() > 1e-3
    assert want[0, 0, 1].item() == want[0, 1, 1].item()


@pytest.mark.parametrize("backend", backend_params(("cpu", "cuda", "triton")))
@pytest.mark.parametrize("objects", [1, 3])
def test_gradient_near_saturation(backend, objects):
    """One channel dominant (fg within 1e-6..1e-3 of 1 or 0): the float32 gradient must not lose
    its value to the cancellation of g_d - dot, which the odds (up to 1e6) would multiply."""
    device = device_of(backend)
    g = torch.Generator().manual_seed(5)
    gap = 10 ** (-3 - 3 * torch.rand(2, objects, 64, generator=g))          # 1e-6 .. 1e-3
    near_one = torch.rand(2, objects, 64, generator=g) < 0.5
    fg = torch.where(near_one, 1 - gap, gap)
    q = torch.stack([1 - fg, fg], dim=2).to(device)
    grad_out = (torch.rand(2, objects + 1, 64, generator=g) - 0.5).to(device)
    exact = _grads(min_background_aggregate_reference, q.double().cpu(), grad_out.double().cpu())
    got = _grads(lambda x: vos_kernels.min_background_aggregate(x, backend=backend), q, grad_out)
    torch.testing.assert_close(got, exact, rtol=1e-3, atol=1e-5 * exact.abs().max().item())


def test_compile_one_object_recompiles_once():
    """O = 1 (CRVOS training): dynamo specialises size 1, so one recompile after the shared
    tester's dynamic shapes, and then none."""
    torch._dynamo.reset()

    def model(x):
        return vos_kernels.min_background_aggregate(x.softmax(dim=2)) * 2

    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    for shape in [(3, 4, 2, 8, 9), (1, 1, 2, 6, 10)]:
        x = torch.randn(shape, requires_grad=True)
        out = compiled(x)
        torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-6)
        (out * torch.arange(out.shape[1]).view(1, -1, 1, 1)).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().max() > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is absent")
def test_cuda_backend_unavailable_says_why():
    with pytest.raises((ValueError, RuntimeError), match="cuda"):
        vos_kernels.min_background_aggregate(_random_q((1, 2, 2, 3)), backend="cuda")


def test_reference_backend_is_eager_autograd():
    q = _random_q((1, 2, 2, 3, 4)).requires_grad_()
    out = vos_kernels.min_background_aggregate(q, backend="reference")
    assert "DivBackward" in type(out.grad_fn).__name__
    with vos_kernels.use_backend("reference"):
        out = vos_kernels.min_background_aggregate(q)
    assert "DivBackward" in type(out.grad_fn).__name__
    if vos_kernels.available_backends()["cpu"][0]:
        assert "DivBackward" not in type(vos_kernels.min_background_aggregate(q).grad_fn).__name__
