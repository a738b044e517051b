"""template_update: every backend against the eager reference, gradients (also unrolled over
frames), registration, compile, errors. Triton under the interpreter: tests/triton/."""
import math

import pytest
import torch

import vos_kernels
from kernel_utils import backend_params, device_of, dtypes_of, tolerance
template_update_with_incoming_op = torch.ops.vos_kernels.template_update_with_incoming.default
from vos_kernels.reference import template_update_reference

# Triton runs here only on a GPU (its interpreter tests are small, in tests/triton/).
BACKENDS = backend_params(("cpu", "cuda", "reference") + (("triton",) if torch.cuda.is_available() else ()))
# (B, Nt, Ct, P): P = 1, Nt != Ct both ways, odd sizes, 16 objects, a paper-like P.
SHAPES = [(1, 1, 1, 1), (2, 5, 7, 11), (3, 17, 40, 97), (1, 40, 17, 1), (16, 8, 8, 13), (2, 48, 64, 1620)]
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
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("with_template", [False, True], ids=["init", "blend"])
def test_forward_matches_reference(backend, shape, with_template):
    key, value, tmpl, weight = make_inputs(*shape, device=device_of(backend), seed=sum(shape), template=with_template)
    out = vos_kernels.template_update(key, value, tmpl, weight, backend=backend)
    assert out.shape == (shape[0], shape[1], shape[2]) and out.is_contiguous() and out.dtype == key.dtype
    ref = template_update_reference(*_double_cpu(key, value, tmpl, weight))
    _assert_close(out, ref, torch.float32)
    if not with_template:  # I is a row-stochastic matrix
        torch.testing.assert_close(out.sum(-1).double().cpu(), torch.ones(shape[:2], dtype=torch.float64),
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_dtype_flash_attention_rule(backend):
    """Low precision: error against the float64 reference at most twice that of the eager
    reference run in that dtype, plus a small absolute term."""
    for dtype in dtypes_of(backend):
        key, value, tmpl, weight = make_inputs(2, 9, 13, 75, dtype=dtype, device=device_of(backend), seed=5)
        out = vos_kernels.template_update(key, value, tmpl, weight, scale=0.3, backend=backend)
        assert out.dtype == dtype
        exact = template_update_reference(*_double_cpu(key, value, tmpl, weight), scale=0.3)
        eager = template_update_reference(key.cpu(), value.cpu(), tmpl.cpu(), weight.cpu(), scale=0.3)
        kernel_error = (out.double().cpu() - exact).abs().max().item()
        eager_error = (eager.double() - exact).abs().max().item()
        assert kernel_error <= 2 * eager_error + tolerance(dtype) * 0.1, (dtype, kernel_error, eager_error)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    device = device_of(backend)
    key, value, tmpl, weight = make_inputs(3, 24, 10, 33, device=device, seed=11)
    views = dict(
        key=key.transpose(1, 2).contiguous().transpose(1, 2),          # P-major storage
        value=torch.stack([value, value], 2).flatten(1, 2)[:, ::2],     # strided channels
        template=tmpl.transpose(1, 2).contiguous().transpose(1, 2),     # column-major
        weight=torch.stack([weight, weight], 1)[:, 0],                  # stride 2
    )
    assert not any(v.is_contiguous() for v in views.values())
    out = vos_kernels.template_update(views["key"], views["value"], views["template"], views["weight"], backend=backend)
    _assert_close(out, template_update_reference(*_double_cpu(key, value, tmpl, weight)), torch.float32)


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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 7, 5, 19), (3, 33, 20, 50)], ids=str)
@pytest.mark.parametrize("with_template", [False, True], ids=["init", "blend"])
def test_gradients_match_reference(backend, shape, with_template):
    """float64 where the backend has it (tight); float32 by the flash-attention rule."""
    device = device_of(backend)
    inputs = make_inputs(*shape, device=device, seed=3, template=with_template)
    grad_out = torch.randn(shape[:3], generator=torch.Generator().manual_seed(4)).to(device)
    run = lambda *a: vos_kernels.template_update(*a, backend=backend)  # noqa: E731
    exact = _grads(template_update_reference, _double_cpu(*inputs), grad_out.double().cpu())
    if torch.float64 in dtypes_of(backend):
        got = _grads(run, [None if t is None else t.double() for t in inputs], grad_out.double())
        for a, b in zip(got, exact):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    got = _grads(run, inputs, grad_out)
    eager = _grads(template_update_reference, [None if t is None else t.cpu() for t in inputs], grad_out.cpu())
    for name, a, e, x in zip(("key", "value", "template", "weight"), got, eager, exact):
        kernel_error, eager_error = (a - x).abs().max().item(), (e - x).abs().max().item()
        assert kernel_error <= 2 * eager_error + 1e-6 * max(1.0, x.abs().max().item()), (name, kernel_error,
                                                                                          eager_error)


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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_template", [False, True], ids=["init", "blend"])
def test_opcheck(backend, with_template):
    key, value, tmpl, weight = [None if t is None else t.requires_grad_() for t in
                                make_inputs(2, 5, 7, 11, device=device_of(backend), template=with_template)]
    torch.library.opcheck(template_update_with_incoming_op, (key, value, tmpl, weight, 0.25, backend))
    torch.library.opcheck(torch.ops.vos_kernels.template_update.default, (key, value, tmpl, weight, None, backend))


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


def test_torch_compile_fullgraph_no_recompiles():
    """A TTVOS-like step compiled once with dynamic shapes serves several batch sizes and P."""
    torch._dynamo.reset()

    def step(key, value, tmpl, logit):
        first = vos_kernels.template_update(key, value)
        return vos_kernels.template_update(key, value, tmpl + first, torch.nn.functional.softplus(logit))

    compiled = torch.compile(step, fullgraph=True, dynamic=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for batch, p in [(2, 30), (3, 41), (5, 17)]:
            key, value, tmpl, weight = [t.requires_grad_() for t in make_inputs(batch, 6, 7, p, seed=batch)]
            out = compiled(key, value, tmpl, weight)
            torch.testing.assert_close(out, step(key, value, tmpl, weight), rtol=1e-5, atol=1e-6)
            out.sum().backward()
            assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (key, value, tmpl, weight))
    torch._dynamo.reset()
    single = make_inputs(1, 6, 7, 30)  # batch 1 (specialised by the compiler) also compiles and matches
    torch.testing.assert_close(torch.compile(step, fullgraph=True)(*single), step(*single), rtol=1e-5, atol=1e-6)


def test_reference_backend_is_eager_autograd():
    key, value, tmpl, weight = [t.requires_grad_() for t in make_inputs(1, 2, 3, 4)]
    out = vos_kernels.template_update(key, value, tmpl, weight, backend="reference")
    assert "CustomOp" not in type(out.grad_fn).__name__ and "template_update" not in type(out.grad_fn).__name__
    with vos_kernels.use_backend("reference"):
        out = vos_kernels.template_update(key, value)
    assert "Softmax" in type(out.grad_fn).__name__


@pytest.mark.parametrize("args, kwargs, error, match", [
    ((torch.rand(2, 3), torch.rand(2, 4, 5)), {}, ValueError, r"key must have 3 dimensions, got shape \(2, 3\)"),
    ((torch.rand(2, 3, 5), torch.rand(2, 4, 6)), {}, ValueError, r"value must be \(B, Ct, P\) with B = 2 and P = 5"),
    ((torch.rand(2, 3, 5), torch.rand(1, 4, 5)), {}, ValueError, r"value must be \(B, Ct, P\) with B = 2"),
    ((torch.rand(2, 3, 0), torch.rand(2, 4, 0)), {}, ValueError, "P >= 1 positions, got P = 0"),
    ((torch.rand(2, 3, 5), torch.rand(2, 4, 5), torch.rand(2, 4, 3), torch.rand(2)), {}, ValueError,
     r"template must be \(B, Nt, Ct\) = \(2, 3, 4\), got shape \(2, 4, 3\)"),
    ((torch.rand(2, 3, 5), torch.rand(2, 4, 5), torch.rand(2, 3, 4)), {}, ValueError, "weight .* is required"),
    ((torch.rand(2, 3, 5), torch.rand(2, 4, 5), None, torch.rand(2)), {}, ValueError, "weight was given without"),
    ((torch.rand(2, 3, 5), torch.rand(2, 4, 5), torch.rand(2, 3, 4), torch.rand(3)), {}, ValueError,
     r"weight must be \(B,\) = \(2,\), got shape \(3,\)"),
    ((torch.rand(2, 3, 5), torch.rand(2, 4, 5, dtype=torch.float64)), {}, TypeError,
     "value must have the same dtype as key"),
    ((torch.ones(2, 3, 5, dtype=torch.int64), torch.ones(2, 4, 5, dtype=torch.int64)), {}, TypeError,
     "key must have a floating dtype"),
    (([[1.0]], torch.rand(2, 4, 5)), {}, TypeError, "key must be a torch.Tensor, got list"),
    ((torch.rand(2, 3, 5), torch.rand(2, 4, 5)), {"scale": -1.0}, ValueError, "scale must be > 0, got -1.0"),
    ((torch.rand(2, 3, 5), torch.rand(2, 4, 5)), {"backend": "fast"}, ValueError, "backend must be one of"),
])
def test_bad_inputs(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        vos_kernels.template_update(*args, **kwargs)


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
