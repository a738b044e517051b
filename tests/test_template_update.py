"""template_update (docs/ops.md §3): the shared op tester (tests/op_tester.py) on every backend
(Triton under the interpreter included), plus what is particular to this op: the weight's
extremes, gradients unrolled over frames, gradient subsets, the CPU task layouts, the C++
kernels' own checks and the Triton forward paths."""
import math

import pytest
import torch

import vos_kernels
from kernel_utils import backend_params, device_of, dtypes_of, tolerance
from op_tester import OpTester
from vos_kernels.reference import template_update_reference

template_update_with_incoming_op = torch.ops.vos_kernels.template_update_with_incoming.default
BACKENDS = backend_params()
_K, _V = torch.rand(2, 3, 5), torch.rand(2, 4, 5)


class TestTemplateUpdate(OpTester):
    op = "template_update"
    # (B, Nt, Ct, P, with a template): P = 1, Nt != Ct both ways, odd sizes, 16 objects, a paper-like P
    cases = [(*shape, with_template) for shape in [(1, 1, 1, 1), (2, 5, 7, 11), (3, 17, 40, 97), (1, 40, 17, 1),
                                                   (16, 8, 8, 13), (2, 48, 64, 1620)]
             for with_template in (False, True)]
    interpreted_cases = [c for c in cases if c[3] < 100]
    dtype_case = (2, 9, 13, 75, True)
    grad_cases = [(*shape, with_template) for shape in [(1, 1, 1, 1), (2, 7, 5, 19), (3, 33, 20, 50)]
                  for with_template in (False, True)]
    low_precision_atol = {torch.float16: 2e-4, torch.bfloat16: 1.6e-3}
    bad_inputs = [
        ((torch.rand(2, 3), _V), {}, ValueError, r"key must have 3 dimensions, got shape \(2, 3\)"),
        ((_K, torch.rand(2, 4, 6)), {}, ValueError, r"value must be \(B, Ct, P\) with B = 2 and P = 5"),
        ((_K, torch.rand(1, 4, 5)), {}, ValueError, r"value must be \(B, Ct, P\) with B = 2"),
        ((torch.rand(2, 3, 0), torch.rand(2, 4, 0)), {}, ValueError, "P >= 1 positions, got P = 0"),
        ((_K, _V, torch.rand(2, 4, 3), torch.rand(2)), {}, ValueError,
         r"template must be \(B, Nt, Ct\) = \(2, 3, 4\), got shape \(2, 4, 3\)"),
        ((_K, _V, torch.rand(2, 3, 4)), {}, ValueError, "weight .* is required"),
        ((_K, _V, None, torch.rand(2)), {}, ValueError, "weight was given without"),
        ((_K, _V, torch.rand(2, 3, 4), torch.rand(3)), {}, ValueError, r"weight must be \(B,\) = \(2,\), got shape \(3,\)"),
        ((_K, _V.double()), {}, TypeError, "value must have the same dtype as key"),
        ((torch.ones(2, 3, 5, dtype=torch.int64), torch.ones(2, 4, 5, dtype=torch.int64)), {}, TypeError,
         "key must have a floating dtype"),
        (([[1.0]], _V), {}, TypeError, "key must be a torch.Tensor, got list"),
        ((_K, _V), {"scale": -1.0}, ValueError, "scale must be > 0, got -1.0"),
        ((_K, _V), {"backend": "fast"}, ValueError, "backend must be one of"),
    ]

    def make_case(self, case, seed=0):
        *shape, with_template = case
        return make_inputs(*shape, dtype=torch.float64, seed=seed + sum(shape), template=with_template), {}

    def call(self, tensors, options, backend):
        return vos_kernels.template_update(*tensors, backend=backend, **options)

    def reference(self, tensors, options):
        return template_update_reference(*tensors, **options)

    def schema_args(self, tensors, options, backend):
        return (*tensors, options.get("scale"), backend), {}

    def non_contiguous_cases(self, device):
        key, value, tmpl, weight = make_inputs(3, 24, 10, 33, device=device, seed=11)
        views = (key.transpose(1, 2).contiguous().transpose(1, 2),          # P-major storage
                 torch.stack([value, value], 2).flatten(1, 2)[:, ::2],     # strided channels
                 tmpl.transpose(1, 2).contiguous().transpose(1, 2),        # column-major
                 torch.stack([weight, weight], 1)[:, 0])                   # stride 2
        return [(views, {}), (views[:2] + (None, None), {"scale": 0.3})]

    def compile_cases(self):
        return [(make_inputs(batch, 6, 7, p, dtype=torch.float64, seed=batch), {}) for batch, p in [(2, 30), (3, 41),
                                                                                                  (5, 17)]]


needs_cpu = pytest.mark.skipif(not vos_kernels.available_backends()["cpu"][0], reason="cpu backend unavailable")


def make_inputs(B, Nt, Ct, P, *, dtype=torch.float32, device="cpu", seed=0, template=True, weight_scale=2.0):
    """key, value with unit-variance entries; a softmax-normalised template; weight in [0, weight_scale)."""
    g = torch.Generator().manual_seed(seed)
    key = torch.randn(B, Nt, P, generator=g, dtype=torch.float64)
    value = torch.randn(B, Ct, P, generator=g, dtype=torch.float64)
    tmpl = torch.softmax(torch.randn(B, Nt, Ct, generator=g, dtype=torch.float64), -1) if template else None
    weight = torch.rand(B, generator=g, dtype=torch.float64) * weight_scale if template else None
    cast = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    return cast(key), cast(value), cast(tmpl), cast(weight)


def _double_cpu(*tensors):
    return [None if t is None else t.detach().double().cpu() for t in tensors]


def _assert_close(out, ref, dtype):
    tol = tolerance(dtype)
    torch.testing.assert_close(out.detach().double().cpu(), ref.double(), rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_zero_and_large(backend):
    """w = 0 keeps the template (and its weight gradient, which needs I, stays right); a huge w
    replaces it by I."""
    device = device_of(backend)
    key, value, tmpl, _ = make_inputs(2, 6, 9, 21, device=device, seed=2)
    zero = torch.zeros(2, device=device, requires_grad=True)
    out = vos_kernels.template_update(key, value, tmpl, zero, backend=backend)
    _assert_close(out, tmpl.double().cpu(), torch.float32)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(device)
    (grad_w,) = torch.autograd.grad(out, zero, g)
    k, v, t = _double_cpu(key, value, tmpl)
    expected = ((g.double().cpu()) * (template_update_reference(k, v) - t)).sum((1, 2))  # (I - T) / (1 + 0)^2
    _assert_close(grad_w, expected, torch.float32)
    large = torch.full((2,), 1e7, device=device)
    out = vos_kernels.template_update(key, value, tmpl, large, backend=backend)
    _assert_close(out, template_update_reference(k, v), torch.float32)


def _grads(fn, inputs, grad_out):
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    wrt = [t for t in leaves if t is not None]
    return [g.double().cpu() for g in torch.autograd.grad(out, wrt, grad_out)]


def _unrolled(update, keys, values, weights):
    """TTVOS training: LT_0 = I_0, LT_t = update(LT_{t-1}, I_t, w_t); a loss on every template."""
    tmpl = update(keys[0], values[0], None, None)
    loss = tmpl.square().sum()
    for k, v, w in zip(keys[1:], values[1:], weights):
        tmpl = update(k, v, tmpl, w)
        loss = loss + (tmpl * torch.arange(tmpl.shape[-1], dtype=tmpl.dtype, device=tmpl.device)).sum()
    return loss


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_through_successive_updates(backend):
    """Gradients flow through 5 unrolled updates (template and weight chain) as in training."""
    device = device_of(backend)
    frames, dtype = 5, (torch.float64 if torch.float64 in dtypes_of(backend) else torch.float32)
    g = torch.Generator().manual_seed(9)
    keys = torch.randn(frames, 2, 6, 23, generator=g, dtype=torch.float64)
    values = torch.randn(frames, 2, 8, 23, generator=g, dtype=torch.float64)
    weights = torch.rand(frames - 1, 2, generator=g, dtype=torch.float64) * 3

    def grads(update, dtype, device):
        ks, vs, ws = (t.to(device, dtype).requires_grad_() for t in (keys, values, weights))
        loss = _unrolled(update, list(ks), list(vs), list(ws))
        return [x.double().cpu() for x in torch.autograd.grad(loss, (ks, vs, ws))]

    fused = lambda k, v, t, w: vos_kernels.template_update(k, v, t, w, backend=backend)  # noqa: E731
    reference = lambda k, v, t, w: template_update_reference(k, v, t, w)  # noqa: E731
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    for a, b in zip(grads(fused, dtype, device), grads(reference, torch.float64, "cpu")):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@needs_cpu
@pytest.mark.parametrize("with_template", [False, True], ids=["init", "blend"])
def test_gradcheck_float64_cpu(with_template):
    inputs = [None if t is None else t.requires_grad_() for t in
              make_inputs(2, 4, 3, 5, dtype=torch.float64, seed=1, template=with_template)]
    if with_template:
        fn = lambda k, v, t, w: vos_kernels.template_update(k, v, t, w, backend="cpu")  # noqa: E731
        assert torch.autograd.gradcheck(fn, inputs)
    else:
        assert torch.autograd.gradcheck(lambda k, v: vos_kernels.template_update(k, v, backend="cpu"), inputs[:2])


@needs_cpu
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("batch", [1, 2, 3])
def test_cpu_task_layouts(threads, batch):
    """The CPU kernel splits items into row/column blocks by thread count, or falls back to
    multithreaded GEMMs: every layout gives the reference's values and gradients."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        inputs = make_inputs(batch, 37, 35, 40, dtype=torch.float64, seed=batch)
        grad_out = torch.randn(batch, 37, 35, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        run = lambda *a: vos_kernels.template_update(*a, backend="cpu")  # noqa: E731
        torch.testing.assert_close(run(*inputs), template_update_reference(*inputs), rtol=1e-12, atol=1e-12)
        for a, b in zip(_grads(run, inputs, grad_out), _grads(template_update_reference, inputs, grad_out)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_subsets(backend):
    """Only some inputs require grad: the others get None and the GEMMs not needed are skipped."""
    device = device_of(backend)
    key, value, tmpl, weight = make_inputs(2, 5, 6, 9, device=device, seed=6)
    grad_out = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(2)).to(device)
    exact = _grads(template_update_reference, _double_cpu(key, value, tmpl, weight), grad_out.double().cpu())
    for index in range(4):
        leaves = [key, value, tmpl, weight]
        leaves[index] = leaves[index].detach().clone().requires_grad_()
        out = vos_kernels.template_update(*leaves, backend=backend)
        (grad,) = torch.autograd.grad(out, leaves[index], grad_out)
        _assert_close(grad, exact[index], torch.float32)


@pytest.mark.parametrize("backend", backend_params(("cpu", "cuda", "triton")))
@pytest.mark.parametrize("with_template", [False, True], ids=["init", "blend"])
def test_fused_op_opcheck(backend, with_template):
    """The fused op itself (the shared tester checks the public op)."""
    dtype = torch.float32 if backend == "triton" else torch.float64
    key, value, tmpl, weight = [None if t is None else t.requires_grad_() for t in
                                make_inputs(2, 5, 7, 11, dtype=dtype, device=device_of(backend),
                                            template=with_template)]
    torch.library.opcheck(template_update_with_incoming_op, (key, value, tmpl, weight, 0.25, backend))


@needs_cpu
def test_opcheck_cpp_kernels():
    key, value, tmpl, weight = make_inputs(2, 5, 7, 11)
    out, incoming = torch.ops.vos_kernels.template_update_forward(key, value, tmpl, weight, 0.3)
    grad_out = torch.randn_like(out)
    ops = torch.ops.vos_kernels
    for with_template in (False, True):
        t, w = (tmpl, weight) if with_template else (None, None)
        inc = incoming if with_template else out
        torch.library.opcheck(ops.template_update_forward.default, (key, value, t, w, 0.3))
        torch.library.opcheck(ops.template_update_backward_scores.default, (grad_out, inc, t, w, 0.3))
        torch.library.opcheck(ops.template_update_backward.default, (grad_out, key, value, inc, t, w, 0.3, True, False))


@needs_cpu
def test_cpp_backward_scores_formula():
    """The elementwise pass CUDA's composite backward mirrors, against its formula."""
    key, value, tmpl, weight = make_inputs(2, 6, 9, 13, dtype=torch.float64, seed=8)
    scale = 0.4
    incoming = template_update_reference(key, value, scale=scale)
    g = torch.randn(2, 6, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    grad_scores, grad_template, grad_weight = torch.ops.vos_kernels.template_update_backward_scores(
        g, incoming, tmpl, weight, scale)
    c = (1 / (1 + weight)).view(-1, 1, 1)
    a = weight.view(-1, 1, 1) * c
    expected = a * scale * incoming * (g - (g * incoming).sum(-1, keepdim=True))
    torch.testing.assert_close(grad_scores, expected)
    torch.testing.assert_close(grad_template, g * c)
    torch.testing.assert_close(grad_weight, (g * (incoming - tmpl) * c * c).sum((1, 2)))


def test_torch_ops_entry_point_and_default_scale():
    key, value, tmpl, weight = make_inputs(2, 4, 6, 25)
    out = torch.ops.vos_kernels.template_update(key, value, tmpl, weight)
    assert isinstance(out, torch.Tensor)
    _assert_close(out, template_update_reference(*_double_cpu(key, value, tmpl, weight), scale=1 / math.sqrt(25)),
                  torch.float32)
    scaled = vos_kernels.template_update(key, value, scale=0.01)
    _assert_close(scaled, template_update_reference(*_double_cpu(key, value), scale=0.01), torch.float32)


def test_reference_backend_is_eager_autograd():
    key, value, tmpl, weight = [t.requires_grad_() for t in make_inputs(1, 2, 3, 4)]
    out = vos_kernels.template_update(key, value, tmpl, weight, backend="reference")
    assert "CustomOp" not in type(out.grad_fn).__name__ and "template_update" not in type(out.grad_fn).__name__
    with vos_kernels.use_backend("reference"):
        out = vos_kernels.template_update(key, value)
    assert "Softmax" in type(out.grad_fn).__name__


@needs_cpu
def test_cpp_kernels_check_their_arguments():
    ops = torch.ops.vos_kernels
    with pytest.raises(RuntimeError, match=r"template_update_forward: value must be \(B, Ct, P\)"):
        ops.template_update_forward(torch.rand(2, 3, 5), torch.rand(2, 4, 6), None, None, 1.0)
    with pytest.raises(RuntimeError, match="template and weight must be given together"):
        ops.template_update_forward(torch.rand(2, 3, 5), torch.rand(2, 4, 5), torch.rand(2, 3, 4), None, 1.0)
    with pytest.raises(RuntimeError, match="scale must be > 0"):
        ops.template_update_forward(torch.rand(2, 3, 5), torch.rand(2, 4, 5), None, None, 0.0)
    with pytest.raises(RuntimeError, match=r"incoming must be \(B, Nt, Ct\) = \(2, 3, 4\)"):
        ops.template_update_backward(torch.rand(2, 3, 3), torch.rand(2, 3, 5), torch.rand(2, 4, 5),
                                     torch.rand(2, 3, 3), None, None, 1.0, True, True)


def test_cuda_backend_unavailable_is_explained():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    key, value, _, _ = make_inputs(1, 2, 3, 4)
    with pytest.raises((ValueError, RuntimeError), match="cuda"):
        vos_kernels.template_update(key, value, backend="cuda")


@needs_cpu
def test_cpp_kernels_write_every_element():
    """Outputs allocated over NaN-poisoned memory must be fully overwritten (forward and backward)."""
    for _ in range(3):
        poison = torch.full((4 * 37 * 29 + 4 * 37 * 211 * 2,), float("nan"))
        del poison
        key, value, tmpl, weight = make_inputs(4, 37, 29, 211, seed=7)
        out, incoming = torch.ops.vos_kernels.template_update_forward(key, value, tmpl, weight, 0.1)
        assert torch.isfinite(out).all() and torch.isfinite(incoming).all()
        grads = torch.ops.vos_kernels.template_update_backward(torch.ones_like(out), key, value, incoming, tmpl,
                                                               weight, 0.1, True, True)
        assert all(torch.isfinite(g).all() for g in grads)


# (B, Nt, Ct, P, split): both Triton forward paths: DIRECT (one program holds whole rows over all
# of P) and the split path (P split over programs, or Ct wider than one 128-wide column tile:
# atomics into a scratch, the last program of a row block finishes it).
TRITON_PATHS = [(1, 1, 1, 1, None), (2, 5, 7, 37, None), (2, 5, 7, 37, 3), (1, 33, 150, 70, None),
                (1, 33, 150, 70, 4), (3, 17, 20, 1, 5), (16, 4, 3, 9, None), (1, 70, 24, 100, 2)]


@pytest.mark.triton
@pytest.mark.parametrize("backend", backend_params(("triton",)))
@pytest.mark.parametrize("case", TRITON_PATHS, ids=str)
@pytest.mark.parametrize("with_template", [False, True], ids=["init", "blend"])
def test_triton_forward_paths_match_reference(backend, case, with_template):
    from vos_kernels.triton.template_update import template_update_forward_triton
    B, Nt, Ct, P, split = case
    key, value, tmpl, weight = make_inputs(B, Nt, Ct, P, device=device_of(backend), seed=P, template=with_template)
    out, incoming = template_update_forward_triton(key, value, tmpl, weight, 0.2, split=split)
    exact = template_update_reference(*_double_cpu(key, value, tmpl, weight), scale=0.2)
    torch.testing.assert_close(out.double().cpu(), exact, rtol=2e-5, atol=2e-5)
    if with_template:
        torch.testing.assert_close(incoming.double().cpu(), template_update_reference(*_double_cpu(key, value), scale=0.2),
                                   rtol=2e-5, atol=2e-5)
    else:
        assert incoming.numel() == 0


@pytest.mark.triton
@pytest.mark.parametrize("backend", backend_params(("triton",)))
def test_triton_refuses_float64_with_a_reason(backend):
    key, value, _, _ = make_inputs(1, 2, 3, 4, dtype=torch.float64, device=device_of(backend))
    with pytest.raises(TypeError, match="triton backend supports .* got torch.float64"):
        vos_kernels.template_update(key, value, backend="triton")
