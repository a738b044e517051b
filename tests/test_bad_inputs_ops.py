"""Bad inputs and extreme valid inputs of the ops (issue 17): a clear error naming the op and the
argument, or a finite and correct result on every backend."""
from __future__ import annotations

import math
import threading

import pytest
import torch

import vos_kernels
from kernel_utils import backend_params, device_of
from vos_kernels import _dispatch
from vos_kernels.ops.memory_read import IMPLEMENTED as MEMORY_READ_IMPLEMENTED

AGGREGATION_BACKENDS = backend_params(("cpu", "cuda", "triton", "reference"))
TINY_EPS = [1e-8, 1e-9, 1e-12, 1e-30, 5e-324]


def _hard_probabilities(objects: int = 3, size: int = 9) -> torch.Tensor:
    """(1, O, size, size) of exact 0s and 1s: each pixel owned by one object, some by none."""
    labels = torch.arange(size * size).reshape(size, size) % (objects + 1)
    return torch.stack([(labels == k + 1).float() for k in range(objects)]).unsqueeze(0)


@pytest.mark.parametrize("backend", AGGREGATION_BACKENDS)
@pytest.mark.parametrize("eps", TINY_EPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_soft_aggregate_of_hard_masks_is_finite_for_every_allowed_eps(backend, eps, dtype):
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("the triton backend does not take float64 (kernel_utils.dtypes_of)")
    prob = _hard_probabilities().to(device_of(backend), dtype)
    out = vos_kernels.soft_aggregate(prob, eps=eps, backend=backend)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.sum(1).double().cpu(), torch.ones(out.shape[0], *out.shape[2:]).double())
    # an owned pixel goes to its object, an unowned one to the background (probability ~1)
    assert torch.equal(out.argmax(1).cpu(), (torch.arange(81).reshape(9, 9) % 4).unsqueeze(0))


@pytest.mark.parametrize("backend", AGGREGATION_BACKENDS)
@pytest.mark.parametrize("eps", TINY_EPS)
def test_min_background_aggregate_of_hard_softmaxes_is_finite_for_every_allowed_eps(backend, eps):
    prob = _hard_probabilities()
    q = torch.stack([1 - prob, prob], dim=2).to(device_of(backend))   # (1, O, 2, H, W)
    out = vos_kernels.min_background_aggregate(q, eps=eps, backend=backend)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.sum(1).cpu(), torch.ones(out.shape[0], *out.shape[2:]))


def test_the_clamp_eps_floor_is_the_compute_type_resolution():
    """Below 2^-24 (float32) / 2^-53 (float64), 1 - eps rounds to 1: the ops raise eps to it."""
    from vos_kernels._checks import check_clamp_eps

    assert check_clamp_eps("op", 1e-30, torch.float32) == 2.0 ** -24
    assert check_clamp_eps("op", 1e-30, torch.bfloat16) == 2.0 ** -24
    assert check_clamp_eps("op", 1e-30, torch.float64) == 2.0 ** -53
    assert check_clamp_eps("op", 1e-7, torch.float32) == 1e-7
    assert torch.tensor(1 - 2.0 ** -24, dtype=torch.float32) < 1


@pytest.mark.parametrize("scale", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("op", ["memory_read", "template_update", "clip_window_attention"])
def test_non_finite_scale_is_refused(op, scale):
    calls = {
        "memory_read": lambda: vos_kernels.memory_read(torch.rand(1, 4, 5), torch.rand(1, 4, 6), torch.rand(1, 3, 6),
                                                       scale=scale),
        "template_update": lambda: vos_kernels.template_update(torch.rand(1, 4, 5), torch.rand(1, 3, 5), scale=scale),
        "clip_window_attention": lambda: vos_kernels.clip_window_attention(
            *(torch.rand(1, 2, 4, 4, 8) for _ in range(3)), num_heads=2, window=(2, 2, 2), scale=scale),
    }
    with pytest.raises(ValueError, match=rf"{op}: scale must be a finite number, got {scale}"):
        calls[op]()


@pytest.mark.parametrize("window, message", [
    ((2.0, 7, 7), r"window\[0\] must be an int, got float 2.0"),
    ((2, 7.5, 7), r"window\[1\] must be an int, got float 7.5"),
    ((2, 7), "window must be 3 ints >= 1"),
])
def test_window_sizes_must_be_ints_not_truncated(window, message):
    q = torch.rand(1, 2, 7, 7, 8)
    with pytest.raises((TypeError, ValueError), match=rf"clip_window_attention: {message}"):
        vos_kernels.clip_window_attention(q, q, q, num_heads=1, window=window)
    with pytest.raises(TypeError, match=r"clip_window_attention: num_heads must be an int, got float 2.0"):
        vos_kernels.clip_window_attention(q, q, q, num_heads=2.0, window=(2, 7, 7))
    with pytest.raises(TypeError, match=r"clip_window_attention: shift\[2\] must be an int, got float 1.0"):
        vos_kernels.clip_window_attention(q, q, q, num_heads=1, window=(2, 7, 7), shift=(0, 0, 1.0))


def test_empty_channel_dims_are_a_value_error_not_a_zero_division():
    with pytest.raises(ValueError, match=r"memory_read: query_key and memory_key must have Ck >= 1 key channels"):
        vos_kernels.memory_read(torch.rand(1, 0, 5), torch.rand(1, 0, 6), torch.rand(1, 3, 6))
    q = torch.rand(1, 2, 4, 4, 0)
    with pytest.raises(ValueError, match=r"clip_window_attention: query, key and value must have C >= 1 channels"):
        vos_kernels.clip_window_attention(q, q, q, num_heads=1, window=(2, 2, 2))
    with pytest.raises(TypeError, match=r"memory_read: top_k must be an int, got float 2.0"):
        vos_kernels.memory_read(torch.rand(1, 4, 5), torch.rand(1, 4, 6), torch.rand(1, 3, 6), top_k=2.0)


def test_use_backend_is_thread_local():
    """A use_backend block in one thread does not change which kernels another thread runs."""
    inside, seen = threading.Event(), {}
    release = threading.Event()

    def in_block():
        with vos_kernels.use_backend("reference"):
            seen["block"] = _dispatch.requested_backend(None)
            inside.set()
            release.wait(10)

    worker = threading.Thread(target=in_block)
    worker.start()
    assert inside.wait(10)
    seen["other thread"] = _dispatch.requested_backend(None)
    release.set()
    worker.join(10)
    assert seen == {"block": "reference", "other thread": "auto"}
    with vos_kernels.use_backend("reference"):   # a new thread starts outside any block
        thread = threading.Thread(target=lambda: seen.__setitem__("new", _dispatch.requested_backend(None)))
        thread.start()
        thread.join(10)
    assert seen["new"] == "auto"


def test_a_compiled_function_is_traced_again_inside_a_use_backend_block():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    fn = torch.compile(lambda p: vos_kernels.soft_aggregate(p) * 2, backend=counter, fullgraph=True)
    prob = torch.rand(1, 2, 5, 5)
    expected = vos_kernels.soft_aggregate(prob, backend="reference") * 2
    torch.testing.assert_close(fn(prob), expected)
    with vos_kernels.use_backend("reference"):
        torch.testing.assert_close(fn(prob), expected)
    assert counter.frame_count == 2   # traced once per backend: the block is guarded on


AGGREGATION_NAN_BACKENDS = backend_params(("cpu", "cuda", "triton"))


@pytest.mark.parametrize("backend", AGGREGATION_NAN_BACKENDS)
def test_nan_in_any_input_of_a_pixel_makes_that_pixel_nan_on_every_backend(backend):
    """The rule (docs/ops.md): NaN in, NaN out for every output of that pixel, as the reference."""
    device = device_of(backend)
    prob = torch.rand(1, 3, 3, 3)
    prob[0, 0, 1, 1] = prob[0, 2, 0, 0] = math.nan
    prob[0, 1, 2, 2] = math.inf                       # clamped to 1 - eps: finite
    q = torch.rand(1, 3, 2, 3, 3).softmax(2)
    q[0, 0, 1, 1, 1] = q[0, 2, 0, 2, 2] = q[0, 1, 0, 0, 0] = math.nan   # object, and "not object" of later objects
    for op, x in ((vos_kernels.soft_aggregate, prob), (vos_kernels.min_background_aggregate, q)):
        ref = op(x, backend="reference")
        out = op(x.to(device), backend=backend).cpu()
        assert torch.equal(torch.isnan(out), torch.isnan(ref)), op
        torch.testing.assert_close(out, ref, equal_nan=True)
        x_grad = x.to(device).requires_grad_()
        ref_grad = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(op(x_grad, backend=backend).nansum(), x_grad)
        (r,) = torch.autograd.grad(op(ref_grad, backend="reference").nansum(), ref_grad)
        nan_pixels = lambda t: torch.isnan(t).flatten(1, -3).any(1)  # noqa: E731
        assert torch.equal(nan_pixels(g.cpu()), nan_pixels(r)), op


MEMORY_READ_BACKENDS = backend_params(("cpu", "triton", "reference"))


@pytest.mark.parametrize("backend", MEMORY_READ_BACKENDS)
def test_top_k_ties_keep_the_lowest_memory_index(backend):
    """Scores tied at the k-th value: the lowest memory indices are read, on every backend."""
    device = device_of(backend)
    values = torch.arange(6.0).view(1, 1, 6).to(device)
    # query 0: all six scores equal; query 1: scores [0, -1, -1, -1, -4, -9] (s = -|mk|^2, qk = 0)
    memory_key = torch.tensor([[[0.0, 1, 1, 1, 2, 3]]], device=device)
    out = vos_kernels.memory_read(torch.zeros(1, 1, 1, device=device), torch.zeros(1, 1, 6, device=device), values,
                                  top_k=2, scale=1.0, backend=backend)
    assert out.flatten().tolist() == [0.5]                               # entries 0 and 1, equal weights
    out = vos_kernels.memory_read(torch.zeros(1, 1, 1, device=device), memory_key, values, top_k=3, scale=1.0,
                                  backend=backend)
    e = math.exp(-1)
    torch.testing.assert_close(out.flatten().cpu(), torch.tensor([(0 + e * 1 + e * 2) / (1 + 2 * e)]))
    key = memory_key.clone().requires_grad_()
    vos_kernels.memory_read(torch.zeros(1, 1, 1, device=device), key, values, top_k=3, scale=1.0,
                            backend=backend).sum().backward()
    assert key.grad[0, 0, 3:].abs().sum() == 0          # entries 3..5 were not read: no gradient


def _bfloat16_cases():
    """(name, call(backend, dtype)) for the three ops with a tl.dot, at odd sizes."""
    torch.manual_seed(0)
    qk, mk, mv = torch.randn(1, 16, 20), torch.randn(1, 16, 30), torch.randn(1, 8, 30)
    key, value = torch.randn(2, 5, 33), torch.randn(2, 7, 33)
    template, weight = torch.rand(2, 5, 7), torch.tensor([0.5, 2.0])
    q, k, v = (torch.randn(1, 2, 5, 6, 16) for _ in range(3))
    return {
        "memory_read top_k": lambda b, d: vos_kernels.memory_read(qk.to(d), mk.to(d), mv.to(d), top_k=5, backend=b),
        "memory_read dense": lambda b, d: vos_kernels.memory_read(qk.to(d), mk.to(d), mv.to(d), backend=b),
        "template_update": lambda b, d: vos_kernels.template_update(key.to(d), value.to(d), template.to(d),
                                                                    weight.to(d), backend=b),
        "clip_window_attention": lambda b, d: vos_kernels.clip_window_attention(
            q.to(d), k.to(d), v.to(d), num_heads=2, window=(2, 3, 3), backend=b),
    }


@pytest.mark.triton
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU interpreter's bfloat16 path")
@pytest.mark.parametrize("case", list(_bfloat16_cases()))
def test_bfloat16_under_the_triton_interpreter_matches_the_cpu_kernel(case):
    """Item 5: the interpreter's bfloat16 tl.dot is wrong upstream (errors up to 8e8); the
    launchers upcast to float32 there, so Triton's bfloat16 result has the same error against
    float64 as the C++ kernel's (both round inputs and output to bfloat16's 8-bit mantissa)."""
    if not vos_kernels.available_backends()["triton"][0] or not vos_kernels.available_backends()["cpu"][0]:
        pytest.skip("needs the triton (interpreter) and cpu backends")
    call = _bfloat16_cases()[case]
    exact = call("reference", torch.float64)
    outs = {b: call(b, torch.bfloat16) for b in ("cpu", "triton")}
    for out in outs.values():
        assert out.dtype == torch.bfloat16
        # bfloat16 rounding of inputs of size ~3 and of the output: a few 2^-8 relative
        assert (out.double() - exact).abs().max() < 0.05 * max(1.0, exact.abs().max().item())
    torch.testing.assert_close(outs["triton"], outs["cpu"], atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("bad", [-0.5, math.inf, math.nan])
@pytest.mark.parametrize("backend", backend_params(("cpu", "cuda", "triton", "reference")))
def test_template_update_refuses_a_negative_or_non_finite_weight(backend, bad):
    device = device_of(backend)
    key, value, template = torch.rand(2, 4, 6), torch.rand(2, 3, 6), torch.rand(2, 4, 3)
    weight = torch.tensor([0.5, bad])
    with pytest.raises(ValueError, match=r"template_update: weight must be finite and >= 0, got \["):
        vos_kernels.template_update(*(t.to(device) for t in (key, value, template, weight)), backend=backend)
    # zero and large finite weights are valid: finite output
    out = vos_kernels.template_update(*(t.to(device) for t in (key, value, template, torch.tensor([0.0, 1e30]))),
                                      backend=backend)
    assert torch.isfinite(out).all()


def _op_calls(dtype=torch.float32, **overrides):
    """The five ops on small valid inputs; `overrides` replaces one tensor argument by name."""
    t = {"prob": torch.rand(1, 2, 3, 3), "q": torch.rand(1, 2, 2, 3, 3).softmax(2),
         "query_key": torch.rand(1, 4, 5), "memory_key": torch.rand(1, 4, 6), "memory_value": torch.rand(1, 3, 6),
         "key": torch.rand(1, 4, 5), "value": torch.rand(1, 3, 5), "template": torch.rand(1, 4, 3),
         "weight": torch.rand(1), "query": torch.rand(1, 2, 4, 4, 8)}
    t = {n: x.to(dtype) for n, x in t.items()}
    t.update(overrides)
    return {
        "soft_aggregate": lambda: vos_kernels.soft_aggregate(t["prob"]),
        "min_background_aggregate": lambda: vos_kernels.min_background_aggregate(t["q"]),
        "memory_read": lambda: vos_kernels.memory_read(t["query_key"], t["memory_key"], t["memory_value"]),
        "template_update": lambda: vos_kernels.template_update(t["key"], t["value"], t["template"], t["weight"]),
        "clip_window_attention": lambda: vos_kernels.clip_window_attention(
            t["query"], t["query"].clone(), t["query"].clone(), num_heads=2, window=(2, 2, 2)),
    }


@pytest.mark.parametrize("op, name, bad, message", [
    ("memory_read", "memory_key", torch.rand(1, 4, 6, dtype=torch.float64),
     r"memory_read: memory_key must have the same dtype as query_key \(torch.float32\), got torch.float64"),
    ("template_update", "weight", torch.rand(1, dtype=torch.float16),
     r"template_update: weight must have the same dtype as key \(torch.float32\), got torch.float16"),
    ("memory_read", "memory_value", torch.rand(1, 3, 6, 1),
     r"memory_read: memory_value must have 3 dimensions, got shape \(1, 3, 6, 1\)"),
    ("template_update", "template", torch.rand(4, 3),
     r"template_update: template must have 3 dimensions, got shape \(4, 3\)"),
    ("clip_window_attention", "query", torch.rand(2, 4, 4, 8),
     r"clip_window_attention: query must have 5 dimensions"),
    ("soft_aggregate", "prob", torch.rand(5),
     r"soft_aggregate: prob must have at least 2 dimensions, got shape \(5,\)"),
    ("soft_aggregate", "prob", torch.ones(1, 2, 3, dtype=torch.int64),
     r"soft_aggregate: prob must have a floating dtype in \('float16', 'bfloat16', 'float32', 'float64'\), "
     r"got torch.int64"),
    ("min_background_aggregate", "q", [[0.5, 0.5]],
     r"min_background_aggregate: q must be a torch.Tensor, got list"),
])
def test_mismatched_dtypes_wrong_ranks_and_non_tensors_name_the_op_and_argument(op, name, bad, message):
    with pytest.raises((TypeError, ValueError), match=message):
        _op_calls(**{name: bad})[op]()


@pytest.mark.parametrize("eps, error, message", [
    (0.0, ValueError, "eps must be > 0, got 0"), (-1e-7, ValueError, "eps must be > 0, got -1e-07"),
    (0.5, ValueError, r"eps must be in \(0, 0.5\), got 0.5"), (math.nan, ValueError, "eps must be a finite number"),
    ("1e-7", TypeError, "eps must be a float, got str"), (True, TypeError, "eps must be a float, got bool"),
])
@pytest.mark.parametrize("op", ["soft_aggregate", "min_background_aggregate"])
def test_eps_outside_its_range_is_refused(op, eps, error, message):
    x = torch.rand(1, 2, 3, 3) if op == "soft_aggregate" else torch.rand(1, 2, 2, 3, 3).softmax(2)
    with pytest.raises(error, match=f"{op}: {message}"):
        getattr(vos_kernels, op)(x, eps=eps)


def test_sizes_below_their_minimum_are_refused():
    qk, mk, mv = torch.rand(1, 4, 5), torch.rand(1, 4, 6), torch.rand(1, 3, 6)
    with pytest.raises(ValueError, match=r"memory_read: top_k must be >= 1, got 0"):
        vos_kernels.memory_read(qk, mk, mv, top_k=0)
    with pytest.raises(TypeError, match=r"memory_read: top_k must be an int, got bool True"):
        vos_kernels.memory_read(qk, mk, mv, top_k=True)
    with pytest.raises(ValueError, match=r"memory_read: the memory is empty \(memory_key has M = 0 entries\)"):
        vos_kernels.memory_read(qk, torch.rand(1, 4, 0), torch.rand(1, 3, 0))
    with pytest.raises(ValueError, match=r"template_update: key and value must have P >= 1 positions, got P = 0"):
        vos_kernels.template_update(torch.rand(1, 4, 0), torch.rand(1, 3, 0))
    q = torch.rand(1, 2, 4, 4, 8)
    with pytest.raises(ValueError, match=r"clip_window_attention: window\[0\] must be >= 1, got 0"):
        vos_kernels.clip_window_attention(q, q, q, num_heads=2, window=(0, 2, 2))
    with pytest.raises(ValueError, match=r"clip_window_attention: scale must be > 0, got 0"):
        vos_kernels.clip_window_attention(q, q, q, num_heads=2, window=(2, 2, 2), scale=0.0)


@pytest.mark.parametrize("backend", AGGREGATION_BACKENDS)
def test_large_logits_and_hard_masks_give_finite_normalised_aggregation(backend):
    """Valid extremes: probabilities of exactly 0 and 1 in float16/bfloat16 and every object
    certain at once still give a finite distribution over the O + 1 planes."""
    device = device_of(backend)
    for dtype in (torch.float16, torch.bfloat16):
        prob = torch.ones(1, 4, 3, 5, dtype=dtype, device=device)     # every object claims every pixel
        out = vos_kernels.soft_aggregate(prob, backend=backend).float().cpu()
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.sum(1), torch.ones(1, 3, 5), atol=1e-2, rtol=0)
        logits = torch.tensor([-1e4, 1e4], dtype=torch.float32).view(1, 1, 2, 1, 1).expand(1, 3, 2, 2, 2)
        out = vos_kernels.min_background_aggregate(logits.softmax(2).to(dtype).to(device), backend=backend)
        out = out.float().cpu()
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.sum(1), torch.ones(1, 2, 2), atol=1e-2, rtol=0)


@pytest.mark.parametrize("backend", AGGREGATION_BACKENDS)
def test_empty_batches_and_spatial_sizes_give_empty_results(backend):
    """Empty sizes where they are valid (no batch, no pixels, no queries, no template rows) give
    empty outputs of the documented shape on every backend, not an error."""
    device = device_of(backend)
    on = lambda *shape: torch.rand(*shape, device=device)  # noqa: E731
    cases = [(vos_kernels.soft_aggregate, (on(0, 2, 3, 3),), (0, 3, 3, 3)),
             (vos_kernels.soft_aggregate, (on(1, 2, 0, 3),), (1, 3, 0, 3)),
             (vos_kernels.min_background_aggregate, (on(1, 2, 2, 0, 4),), (1, 3, 0, 4)),
             (vos_kernels.template_update, (on(1, 0, 5), on(1, 3, 5)), (1, 0, 3))]
    if backend in MEMORY_READ_IMPLEMENTED:
        cases.append((vos_kernels.memory_read, (on(1, 4, 0), on(1, 4, 6), on(1, 3, 6)), (1, 3, 0)))
    for op, args, shape in cases:
        assert op(*args, backend=backend).shape == shape, op.__name__


def test_use_backend_is_local_to_an_asyncio_task():
    import asyncio

    async def inside(seen):
        with vos_kernels.use_backend("reference"):
            await asyncio.sleep(0.01)
            seen["block"] = _dispatch.requested_backend(None)
            await asyncio.sleep(0.01)

    async def outside(seen):
        await asyncio.sleep(0.005)          # runs while the other task is inside its block
        seen["other task"] = _dispatch.requested_backend(None)

    async def main():
        seen = {}
        await asyncio.gather(inside(seen), outside(seen))
        return seen

    assert asyncio.run(main()) == {"block": "reference", "other task": "auto"}
