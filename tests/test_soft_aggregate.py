"""soft_aggregate: the shared op tester (tests/op_tester.py) plus what is particular to this op."""
import pytest
import torch

import vos_kernels
from kernel_utils import backend_params, device_of, tolerance
from op_tester import OpTester
from vos_kernels.reference import soft_aggregate_reference

BACKENDS = backend_params()


class TestSoftAggregate(OpTester):
    op = "soft_aggregate"
    # (B, O, *spatial): odd sizes, one object, 0 to 3 spatial dims, the paper's 1620 pixels
    cases = [(1, 1, 1), (2, 1, 97), (1, 10, 13, 17), (3, 5, 7, 11), (2, 3, 4, 5, 6), (1, 2, 1620)]
    dtype_case = (2, 4, 9, 13)
    grad_cases = [(2, 1, 5, 9), (2, 10, 5, 9)]
    bad_inputs = [
        ((torch.rand(5),), {}, ValueError, "prob must have at least 2 dimensions, got shape \\(5,\\)"),
        ((torch.ones(2, 3, 4, dtype=torch.int64),), {}, TypeError, "prob must have a floating dtype .* got torch.int64"),
        ((torch.rand(2, 0, 4),), {}, ValueError, "prob must have at least one object"),
        (([[0.5]],), {}, TypeError, "prob must be a torch.Tensor, got list"),
        ((torch.rand(1, 2, 3),), {"eps": 0.7}, ValueError, "eps must be in \\(0, 0.5\\), got 0.7"),
        ((torch.rand(1, 2, 3),), {"backend": "fast"}, ValueError, "backend must be one of"),
    ]

    def make_case(self, shape, seed=0):
        prob = _random_prob(shape, dtype=torch.float64, seed=seed + len(shape))
        if len(shape) == 4 and shape[2] >= 1 and shape[3] >= 3:   # clamp edges in the gradient cases
            prob[0, :, 0, :3] = torch.tensor([0.0, 1.0, 1e-9], dtype=torch.float64)
        return (prob,), {}

    def call(self, tensors, options, backend):
        return vos_kernels.soft_aggregate(tensors[0], backend=backend, **options)

    def reference(self, tensors, options):
        return soft_aggregate_reference(tensors[0], **options)

    def schema_args(self, tensors, options, backend):
        return (tensors[0], 1e-7, backend), {}

    def non_contiguous_cases(self, device):
        base = _random_prob((2, 16, 12, 6), device=device, seed=3)
        views = [base.permute(0, 3, 2, 1)[:, :5],            # objects strided, spatial transposed
                 base[:, ::3, 1::2, :],                      # sliced objects and rows
                 base.transpose(2, 3)]
        return [((v,), {}) for v in views]

    def gradcheck_cases(self):
        return [(((torch.rand(2, 3, 4, 5, dtype=torch.float64) * 0.9 + 0.05),), {})]

    def cpp_opcheck_cases(self):
        prob = _random_prob((2, 3, 35))
        return [("soft_aggregate_forward", (prob, 1e-7)),
                ("soft_aggregate_backward", (_random_prob((2, 4, 35)), prob, 1e-7))]

    def compile_cases(self):
        return [((_random_prob(shape, dtype=torch.float64),), {}) for shape in [(2, 3, 8, 9), (3, 5, 7, 11), (4, 2, 6, 10)]]


def _random_prob(shape, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def _assert_close(out, ref, dtype):
    tol = tolerance(dtype)
    torch.testing.assert_close(out.double(), ref.double(), rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_probabilities(backend):
    device = device_of(backend)
    prob = torch.tensor([[[0.0, 1.0, 0.0, 1.0, 0.5, 1e-9, 1 - 1e-9],
                          [0.0, 0.0, 1.0, 1.0, 0.5, 1e-9, 1.0]]], device=device)
    out = vos_kernels.soft_aggregate(prob, backend=backend)
    assert torch.isfinite(out).all()
    _assert_close(out.cpu(), soft_aggregate_reference(prob.double().cpu()), torch.float32)
    # all-zero objects: the background takes (almost) everything
    assert out[0, 0, 0] > 0.999999


def _grads(fn, prob, grad_out):
    p = prob.clone().requires_grad_()
    (grad,) = torch.autograd.grad(fn(p), p, grad_out)
    return grad.double().cpu()


@pytest.mark.parametrize("backend", backend_params(("cpu", "cuda", "triton")))
@pytest.mark.parametrize("objects", [1, 3])
def test_gradient_near_saturation(backend, objects):
    """One channel dominant (p within 1e-6..1e-3 of 1 or 0): the float32 gradient must not lose
    its value to the cancellation of g_d - dot, which the ratio (up to 1e6) would multiply.
    Found by the benchmark: the naive formula was off by 2e-3 of the largest gradient at O = 1."""
    device = device_of(backend)
    g = torch.Generator().manual_seed(5)
    gap = 10 ** (-3 - 3 * torch.rand(2, objects, 64, generator=g))          # 1e-6 .. 1e-3
    near_one = torch.rand(2, objects, 64, generator=g) < 0.5
    prob = torch.where(near_one, 1 - gap, gap).to(device)
    grad_out = (torch.rand(2, objects + 1, 64, generator=g) - 0.5).to(device)
    exact = _grads(soft_aggregate_reference, prob.double().cpu(), grad_out.double().cpu())
    got = _grads(lambda p: vos_kernels.soft_aggregate(p, backend=backend), prob, grad_out)
    # float32 inputs carry ~6e-8 absolute error near 1; the gradient's sensitivity to that is
    # what remains: 1e-5 of the largest gradient, pointwise.
    torch.testing.assert_close(got, exact, rtol=1e-3, atol=1e-5 * exact.abs().max().item())



def test_reference_backend_is_eager_autograd():
    prob = _random_prob((1, 2, 3, 4)).requires_grad_()
    out = vos_kernels.soft_aggregate(prob, backend="reference")
    assert "SoftmaxBackward" in type(out.grad_fn).__name__ or "ToCopyBackward" in type(out.grad_fn).__name__


def test_backend_selection_context_and_env(monkeypatch):
    prob = _random_prob((1, 2, 3, 4))
    with vos_kernels.use_backend("reference"):
        out = vos_kernels.soft_aggregate(prob.requires_grad_())
    assert "Softmax" in type(out.grad_fn).__name__
    monkeypatch.setenv("VOS_KERNELS_BACKEND", "reference")
    out = vos_kernels.soft_aggregate(prob)
    assert "Softmax" in type(out.grad_fn).__name__
    monkeypatch.setenv("VOS_KERNELS_BACKEND", "bogus")
    with pytest.raises(ValueError, match="VOS_KERNELS_BACKEND must be one of"):
        vos_kernels.soft_aggregate(prob)
    with pytest.raises(ValueError, match=r"use_backend\(name\) must be one of"):
        with vos_kernels.use_backend("gpu"):
            pass


def test_available_backends_reports_reasons():
    status = vos_kernels.available_backends()
    assert set(status) == {"cpu", "cuda", "triton", "reference"}
    for ok, why in status.values():
        assert isinstance(ok, bool) and why
    if not torch.cuda.is_available():
        assert status["cuda"][0] is False


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is absent")
def test_cuda_backend_unavailable_says_why():
    with pytest.raises((ValueError, RuntimeError), match="cuda"):
        vos_kernels.soft_aggregate(torch.rand(1, 2, 3), backend="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to mix devices")
def test_device_mix_in_backward():
    prob = torch.rand(1, 2, 3, device="cuda", requires_grad=True)
    with pytest.raises(ValueError, match="backend 'cpu' needs CPU tensors"):
        vos_kernels.soft_aggregate(prob, backend="cpu")
