"""The shared op tester: one base class that every op's tests subclass (after torchvision's RoIOpTester).

A subclass `class TestMyOp(OpTester)` declares the op (its name, backends, cases and how to call
it and its reference); pytest then runs, for every backend available here (Triton under the CPU
interpreter included, see conftest.py), and with the reasons of the unavailable ones as skips:

  test_forward        each case against the float64 eager reference, in float64 and float32
  test_dtypes         every dtype the backend claims; float16/bfloat16 by the flash-attention rule
  test_non_contiguous strided / permuted views against the reference
  test_backward       gradients of every differentiable input against the reference's gradients
  test_opcheck        torch.library.opcheck of torch.ops.vos_kernels.<op> (schema, autograd, fake, AOT)
  test_compile        torch.compile(fullgraph=True, dynamic=True): same values, no recompiles
  test_gradcheck_cpu  torch.autograd.gradcheck of the C++ kernels in float64 on tiny inputs
  test_opcheck_cpp_kernels  opcheck of the C++ ops themselves (their fake kernels, for direct callers)
  test_cpp_kernels_write_every_element  the same C++ calls over NaN-poisoned memory
  test_bad_input      each bad call raises the error type and message declared for it

Tolerances are the rules of docs/testing.md: float64 tight, float32 `tolerance(float32)`,
float16/bfloat16 at most twice the error of the eager reference run in that dtype plus a small
absolute term (`LOW_PRECISION_ATOL`), float32 gradients at most twice the eager float32 error.

What a subclass provides (tensors are float64 CPU; `None` stands for an absent optional tensor):
  op, backends, cases, grad_cases, interpreted_cases (a small subset for the Triton interpreter),
  dtype_case, bad_inputs [(args, kwargs, error, match)], low_precision_atol, and the methods
  make_case, call, reference, schema_args, non_contiguous_cases, compile_cases, gradcheck_cases,
  cpp_opcheck_cases (and, where the defaults do not fit, dtypes and opcheck_utils).
"""
from __future__ import annotations

import pytest
import torch

import vos_kernels
from kernel_utils import backend_params, device_of, dtypes_of, tolerance

LOW_PRECISION = (torch.float16, torch.bfloat16)
# The absolute term of the flash-attention rule: a few output ulps of the dtype at values ~1.
LOW_PRECISION_ATOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def to(tensors, dtype, device, requires_grad=False):
    """Cast a tuple of tensors (None kept) to dtype/device; optionally make them leaves that require grad."""
    return tuple(None if t is None else t.detach().to(device=device, dtype=dtype).requires_grad_(requires_grad)
                 for t in tensors)


def max_error(out, exact) -> float:
    return (out.detach().double().cpu() - exact.detach().double().cpu()).abs().max().item() if exact.numel() else 0.0


def grads(fn, tensors, grad_out):
    """Gradients of sum(fn(*tensors) * grad_out) with respect to every tensor (None skipped), float64 CPU."""
    leaves = [t for t in tensors if t is not None]
    return [g.double().cpu() for g in torch.autograd.grad(fn(*tensors), leaves, grad_out)]


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def _skip_unless_available(backend: str) -> None:
    ok, why = vos_kernels.available_backends()[backend]
    if not ok:
        pytest.skip(f"{backend}: {why}")


class OpTester:
    """Base class of an op's tests; see the module docstring for what a subclass declares."""
    op: str
    backends: tuple[str, ...] = ("cpu", "cuda", "triton", "reference")
    cases: list = []
    grad_cases: list = []
    interpreted_cases: list | None = None      # cases for Triton in the CPU interpreter (None: all)
    dtype_case = None                          # the case of test_dtypes (None: the first case)
    bad_inputs: list = []
    low_precision_atol = LOW_PRECISION_ATOL
    seed = 0

    # --- what a subclass declares ---------------------------------------------------------------
    def make_case(self, case, seed: int = 0) -> tuple[tuple, dict]:
        """(tensors, options) for one case: float64 CPU tensors and the non-tensor arguments."""
        raise NotImplementedError

    def call(self, tensors, options, backend):
        """The public function on these inputs."""
        raise NotImplementedError

    def reference(self, tensors, options):
        """The eager reference on these inputs."""
        raise NotImplementedError

    def schema_args(self, tensors, options, backend) -> tuple[tuple, dict]:
        """(args, kwargs) of torch.ops.vos_kernels.<op>, backend included."""
        raise NotImplementedError

    def opcheck_utils(self, backend):
        """The opcheck tests to run (None: all of them). Under the Triton interpreter AOT dispatch
        takes about a minute per op; that path does not depend on the backend and runs on the others."""
        if backend == "triton" and not torch.cuda.is_available():
            return ("test_schema", "test_autograd_registration", "test_faketensor")
        return None

    def non_contiguous_cases(self, device) -> list[tuple[tuple, dict]]:
        """(tensors, options) whose tensors are strided float32 views on `device`."""
        return []

    def compile_cases(self) -> list[tuple[tuple, dict]]:
        """At least two (tensors, options) of different sizes (>= 2 in every dim that varies)."""
        return []

    def gradcheck_cases(self) -> list[tuple[tuple, dict]]:
        """Tiny float64 (tensors, options) where the op is smooth, for torch.autograd.gradcheck on cpu."""
        return []

    def cpp_opcheck_cases(self) -> list[tuple[str, tuple]]:
        """(C++ op name, arguments) to opcheck the C++ kernels torch.ops.vos_kernels.<name> directly."""
        return []

    def dtypes(self, backend: str) -> list[torch.dtype]:
        """The dtypes a backend claims for this op."""
        return dtypes_of(backend)

    # --- parametrisation ------------------------------------------------------------------------
    def pytest_generate_tests(self, metafunc):
        names = metafunc.fixturenames
        if "case" in names or "grad_case" in names:
            key = "case" if "case" in names else "grad_case"
            cases = self.cases if key == "case" else self.grad_cases
            params = []
            for backend in backend_params(self.backends):
                chosen = cases
                if backend.values[0] == "triton" and not torch.cuda.is_available() and self.interpreted_cases:
                    chosen = [c for c in cases if c in self.interpreted_cases]
                params += [pytest.param(backend.values[0], c, marks=backend.marks, id=f"{backend.id}-{c}")
                           for c in chosen]
            metafunc.parametrize(("backend", key), params)
        elif "backend" in names:
            metafunc.parametrize("backend", backend_params(self.backends))
        if "bad" in names:
            metafunc.parametrize("bad", self.bad_inputs, ids=[f"bad{i}" for i in range(len(self.bad_inputs))])

    # --- the shared tests -----------------------------------------------------------------------
    def _check_forward(self, backend, tensors, options, dtypes):
        exact = self.reference(tensors, options)
        for dtype in dtypes:
            inputs = to(tensors, dtype, device_of(backend))
            out = self.call(inputs, options, backend)
            assert out.shape == exact.shape and out.dtype == dtype and out.is_contiguous()
            if dtype in LOW_PRECISION:
                eager = self.reference(to(inputs, dtype, "cpu"), options)
                allowed = 2 * max_error(eager, exact) + self.low_precision_atol[dtype]
                assert max_error(out, exact) <= allowed, (dtype, max_error(out, exact), allowed)
            else:
                tol = tolerance(dtype)
                torch.testing.assert_close(out.double().cpu(), exact, rtol=tol, atol=tol, equal_nan=True)

    def test_forward(self, backend, case):
        tensors, options = self.make_case(case, self.seed)
        claimed = self.dtypes(backend)
        self._check_forward(backend, tensors, options, [d for d in (torch.float64, torch.float32) if d in claimed])

    def test_dtypes(self, backend):
        case = self.cases[0] if self.dtype_case is None else self.dtype_case
        if backend == "triton" and not torch.cuda.is_available() and self.interpreted_cases:
            case = self.interpreted_cases[0]
        tensors, options = self.make_case(case, self.seed + 1)
        self._check_forward(backend, tensors, options, self.dtypes(backend))

    def test_non_contiguous(self, backend):
        cases = self.non_contiguous_cases(device_of(backend))
        assert cases, f"{type(self).__name__} declares no non-contiguous cases"
        for tensors, options in cases:
            assert any(t is not None and not t.is_contiguous() for t in tensors)
            exact = self.reference(to(tensors, torch.float64, "cpu"), options)
            out = self.call(tensors, options, backend)
            tol = tolerance(tensors[0].dtype)
            torch.testing.assert_close(out.double().cpu(), exact, rtol=tol, atol=tol)

    def test_backward(self, backend, grad_case):
        """float64 where the backend has it (tight); float32 by the flash-attention rule: the error
        against the float64 reference is at most twice that of the eager reference run in float32."""
        tensors, options = self.make_case(grad_case, self.seed + 2)
        device = device_of(backend)
        run = lambda *t: self.call(t, options, backend)  # noqa: E731
        ref = lambda *t: self.reference(t, options)      # noqa: E731
        exact_out = self.reference(tensors, options)
        grad_out = torch.randn(exact_out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        exact = grads(ref, to(tensors, torch.float64, "cpu", True), grad_out)
        scale = max(g.abs().max().item() for g in exact)
        if torch.float64 in self.dtypes(backend):
            got = grads(run, to(tensors, torch.float64, device, True), grad_out.to(device))
            for a, b in zip(got, exact):
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10 * scale)
        if torch.float32 in self.dtypes(backend):
            got = grads(run, to(tensors, torch.float32, device, True), grad_out.float().to(device))
            eager = grads(ref, to(tensors, torch.float32, "cpu", True), grad_out.float())
            for index, (a, e, b) in enumerate(zip(got, eager, exact)):
                kernel_error, eager_error = max_error(a, b), max_error(e, b)
                assert kernel_error <= 2 * eager_error + 1e-5 * scale, (index, kernel_error, eager_error)

    def test_opcheck(self, backend):
        tensors, options = self.make_case(self.grad_cases[0], self.seed + 3)
        dtype = torch.float64 if torch.float64 in self.dtypes(backend) else torch.float32
        inputs = to(tensors, dtype, device_of(backend), requires_grad=True)
        args, kwargs = self.schema_args(inputs, options, backend)
        utils = self.opcheck_utils(backend)
        torch.library.opcheck(getattr(torch.ops.vos_kernels, self.op).default, args, kwargs,
                              **({} if utils is None else {"test_utils": utils}))

    def test_compile(self):
        """fullgraph, dynamic shapes, forward and backward, on the default backend of CPU tensors."""
        cases = self.compile_cases()
        if not cases:
            pytest.skip(f"{type(self).__name__} declares no compile cases")
        torch._dynamo.reset()
        options = cases[0][1]
        eager = lambda *t: self.call(t, options, None)  # noqa: E731
        compiled = torch.compile(eager, fullgraph=True, dynamic=True)
        with torch._dynamo.config.patch(error_on_recompile=True):
            for tensors, case_options in cases:
                assert case_options == options, "compile cases share their non-tensor options"
                inputs = to(tensors, torch.float32, "cpu", True)
                out = compiled(*inputs)
                torch.testing.assert_close(out, eager(*inputs), rtol=1e-5, atol=1e-6)
                grad_out = torch.randn_like(out)
                got = torch.autograd.grad(out, [t for t in inputs if t is not None], grad_out)
                want = torch.autograd.grad(eager(*inputs), [t for t in inputs if t is not None], grad_out)
                for a, b in zip(got, want):
                    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

    def _declared(self, cases, what):
        if not cases:
            pytest.skip(f"{type(self).__name__} declares no {what}")
        _skip_unless_available("cpu")
        return cases

    def test_gradcheck_cpu(self):
        for tensors, options in self._declared(self.gradcheck_cases(), "gradcheck cases"):
            inputs = to(tensors, torch.float64, "cpu", requires_grad=True)

            def run(*leaves, inputs=inputs):
                it = iter(leaves)
                return self.call(tuple(None if t is None else next(it) for t in inputs), options, "cpu")

            assert torch.autograd.gradcheck(run, [t for t in inputs if t is not None])

    def test_opcheck_cpp_kernels(self):
        for name, args in self._declared(self.cpp_opcheck_cases(), "C++ kernels to check"):
            torch.library.opcheck(getattr(torch.ops.vos_kernels, name).default, args)

    def test_cpp_kernels_write_every_element(self):
        """Outputs allocated over freed NaN-filled blocks (the allocator hands them back) must be
        fully overwritten."""
        for name, args in self._declared(self.cpp_opcheck_cases(), "C++ kernels to check"):
            kernel = getattr(torch.ops.vos_kernels, name)
            sizes = [t.numel() for t in _as_tuple(kernel(*args))]
            for _ in range(3):
                poison = [torch.full((n,), float("nan")) for n in sizes]
                del poison
                assert all(torch.isfinite(t).all() for t in _as_tuple(kernel(*args))), name

    def test_bad_input(self, bad):
        args, kwargs, error, match = bad
        with pytest.raises(error, match=match):
            self.public()(*args, **kwargs)

    def public(self):
        """The public function that bad inputs are passed to."""
        return getattr(vos_kernels, self.op)
