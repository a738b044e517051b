"""The op layer itself (vos_kernels._registry): a toy op declared in one place passes the shared
op tester, and importing vos_kernels plus the first call of every op leaves torch._dynamo unimported."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from op_tester import OpTester
from vos_kernels._checks import check_positive_float, check_tensor
from vos_kernels._registry import Backward, FusedOp, Kernel, OpDefinition, define_op

ROOT = Path(__file__).resolve().parents[1]
TOY = "_toy_scaled_square"


# --- a sixth op, declared the way the five are: kernels, one FusedOp, one OpDefinition --------------
def _toy_reference(x, alpha):
    """alpha * x^2, the eager reference (plain autograd)."""
    return alpha * x * x


def _toy_validate(x, alpha):
    check_tensor(TOY, "x", x, min_dim=1)
    return x, check_positive_float(TOY, "alpha", alpha)


def _compute(t):
    """The kernels' compute dtype: float64 for float64, else float32 (as the real kernels)."""
    return t.to(torch.float64 if t.dtype == torch.float64 else torch.float32)


def _toy_forward(x, alpha):      # stands in for a C++ kernel: contiguous output
    return (_compute(x) * _compute(x) * alpha).to(x.dtype).contiguous()


def _toy_backward(grad_out, x, alpha):
    return (_compute(grad_out) * 2 * alpha * _compute(x)).to(x.dtype).contiguous()


TOY_FUSED = FusedOp(
    f"{TOY}_fused", "Tensor x, float alpha", "Tensor",
    forward=Kernel(_toy_forward, None, fake=lambda x, alpha: torch.empty_like(x, memory_format=torch.contiguous_format)),
    backward=Backward(Kernel(_toy_backward, None,
                             fake=lambda g, x, alpha: torch.empty_like(x, memory_format=torch.contiguous_format)),
                      saved=lambda inputs, output: inputs, grads_for=(0,)),
    backends=("cpu",), grad_arguments="Tensor grad_out, Tensor x, float alpha", grad_returns="Tensor")

TOY_OP = define_op(OpDefinition(TOY, "(Tensor x, float alpha=2.0, str backend='auto') -> Tensor",
                                validate=_toy_validate, reference=_toy_reference, fused=TOY_FUSED,
                                backends=("cpu", "reference")))


def toy(x, *, alpha=2.0, backend=None):
    return TOY_OP(x, alpha, backend=backend)


class TestToyOp(OpTester):
    op = TOY
    backends = ("cpu", "reference")
    cases = [(1,), (7,), (3, 5, 2)]
    grad_cases = [(4, 9)]
    bad_inputs = [(("x",), {}, TypeError, "x must be a torch.Tensor, got str"),
                  ((torch.ones(3),), {"alpha": -1.0}, ValueError, "alpha must be > 0, got -1.0"),
                  ((torch.ones(3),), {"backend": "cuda"}, (ValueError, RuntimeError), "cuda")]

    def make_case(self, shape, seed=0):
        return (torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64),), {}

    def call(self, tensors, options, backend):
        return toy(tensors[0], backend=backend)

    def reference(self, tensors, options):
        return _toy_reference(tensors[0], 2.0)

    def schema_args(self, tensors, options, backend):
        return (tensors[0], 2.0, backend), {}

    def non_contiguous_cases(self, device):
        return [((torch.randn(6, 8, device=device).t(),), {})]

    def compile_cases(self):
        return [((torch.randn(shape, dtype=torch.float64),), {}) for shape in [(2, 3), (5, 4)]]

    def public(self):
        return toy


def test_fused_op_skips_the_dispatcher_only_without_autograd():
    x = torch.randn(5)
    assert toy(x, backend="cpu").grad_fn is None
    y = toy(x.requires_grad_(), backend="cpu")
    assert "vos_kernels" in type(y.grad_fn).__name__ or "Generated" in type(y.grad_fn).__name__


def test_fused_op_refuses_the_reference_and_says_where_it_is():
    with pytest.raises(ValueError, match="backend='reference'"):
        torch.ops.vos_kernels._toy_scaled_square_fused(torch.randn(3), 2.0, "reference")


def test_every_public_op_is_registered_once_through_the_helper():
    names = ("soft_aggregate", "min_background_aggregate", "memory_read", "template_update", "clip_window_attention")
    for name in names:
        assert hasattr(torch.ops.vos_kernels, name)
    calls = subprocess.run(["grep", "-rln", "torch.library", "vos_kernels"], cwd=ROOT, capture_output=True, text=True)
    assert calls.stdout.split() == ["vos_kernels/_registry.py"], calls.stdout


FIRST_CALLS = """
import sys, torch, vos_kernels
x = torch.rand(1, 2, 5, 6)
vos_kernels.soft_aggregate(x.requires_grad_()).sum().backward()
vos_kernels.min_background_aggregate(torch.rand(1, 2, 2, 5, 6).softmax(2))
vos_kernels.memory_read(torch.rand(1, 8, 10), torch.rand(1, 8, 12), torch.rand(1, 4, 12), top_k=3)
vos_kernels.memory_read(torch.rand(1, 8, 10), torch.rand(1, 8, 12), torch.rand(1, 4, 12))
vos_kernels.template_update(torch.rand(1, 4, 10), torch.rand(1, 5, 10))
vos_kernels.clip_window_attention(*[torch.rand(1, 2, 7, 7, 8) for _ in range(3)], num_heads=2)
print(sorted(m for m in sys.modules if m.startswith("torch._dynamo")))
"""


def test_first_calls_leave_torch_dynamo_unimported():
    """torch._dynamo costs about 1 s to import; only torch.compile should pay it (docs/ops.md)."""
    run = subprocess.run([sys.executable, "-c", FIRST_CALLS], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "[]", run.stdout
