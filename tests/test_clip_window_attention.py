"""clip_window_attention: the reference against a per-token loop, every backend against the
reference and against Video Swin's pad + roll + mask formulation, gradients, registration, errors.
(Triton: tests/triton/test_clip_window_attention_triton.py.)"""
import itertools

import pytest
import torch

import vos_kernels
from kernel_utils import backend_params, device_of, tolerance
from vos_kernels.reference.clip_window_attention import clip_window_attention_reference as reference
from vos_kernels.reference.video_swin_window_attention import video_swin_window_attention

BACKENDS = backend_params(("cpu", "cuda", "reference"))
HAS_CPU = vos_kernels.available_backends()["cpu"][0]
needs_cpu = pytest.mark.skipif(not HAS_CPU, reason="cpu backend unavailable (vos_kernels._C not built)")

# (B, L, H, W, C), heads, window, shift: odd sizes, windows cut by the border on every axis,
# L = 1, H and W smaller than the window, shift (0, 0, 0) and (1, 3, 3).
CASES = [
    ((1, 5, 9, 11, 12), 3, (2, 3, 4), (1, 1, 2)),
    ((2, 1, 8, 9, 8), 2, (2, 7, 7), (1, 3, 3)),
    ((1, 3, 4, 5, 8), 2, (2, 7, 7), (1, 3, 3)),
    ((1, 3, 4, 5, 8), 2, (2, 7, 7), (0, 0, 0)),
    ((1, 4, 14, 21, 16), 2, (2, 7, 7), (0, 0, 0)),
    ((1, 5, 15, 17, 16), 4, (2, 7, 7), (1, 3, 3)),
    ((2, 3, 6, 5, 6), 1, (3, 2, 2), (2, 1, 0)),
]
CASE_IDS = [f"{s}-h{h}-w{w}-s{sh}" for s, h, w, sh in CASES]


def _rows(window):
    return (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)


def _inputs(shape, heads, window, dtype=torch.float64, device="cpu", bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))
    table = torch.randn(_rows(window), heads, generator=g, dtype=torch.float64) if bias else None
    move = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    return move(q), move(k), move(v), move(table)


def brute_force(q, k, v, heads, window, shift, table, scale):
    """Per query token: find its window's tokens by the contract's index formula, attend."""
    B, L, H, W, C = q.shape
    d = C // heads
    fronts = [(w - s) % w for w, s in zip(window, shift)]
    index = lambda p, axis: (p + fronts[axis]) // window[axis]  # noqa: E731
    local = lambda p, axis: (p + fronts[axis]) % window[axis]   # noqa: E731
    out = torch.zeros_like(q)
    positions = list(itertools.product(range(L), range(H), range(W)))
    for b, (t, h, w) in itertools.product(range(B), positions):
        mine = (index(t, 0), index(h, 1), index(w, 2))
        members = [p for p in positions if (index(p[0], 0), index(p[1], 1), index(p[2], 2)) == mine]
        for head in range(heads):
            ch = slice(head * d, (head + 1) * d)
            scores = []
            for (tj, hj, wj) in members:
                s = (q[b, t, h, w, ch] * k[b, tj, hj, wj, ch]).sum() * scale
                if table is not None:
                    dt = local(t, 0) - local(tj, 0) + window[0] - 1
                    dh = local(h, 1) - local(hj, 1) + window[1] - 1
                    dw = local(w, 2) - local(wj, 2) + window[2] - 1
                    s = s + table[(dt * (2 * window[1] - 1) + dh) * (2 * window[2] - 1) + dw, head]
                scores.append(s)
            weights = torch.softmax(torch.stack(scores), 0)
            out[b, t, h, w, ch] = sum(wt * v[b, tj, hj, wj, ch] for wt, (tj, hj, wj) in zip(weights, members))
    return out


def _check(out, ref, dtype):
    tol = tolerance(dtype)
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out.double().cpu(), ref.double().cpu(), rtol=tol, atol=tol)


@pytest.mark.parametrize("shape, heads, window, shift", [
    ((1, 3, 4, 5, 4), 2, (2, 3, 3), (1, 1, 2)),
    ((2, 1, 3, 8, 2), 1, (2, 7, 7), (1, 3, 3)),
    ((1, 4, 5, 3, 4), 2, (3, 2, 2), (0, 0, 0)),
])
@pytest.mark.parametrize("bias", [True, False])
def test_reference_matches_per_token_loop(shape, heads, window, shift, bias):
    q, k, v, table = _inputs(shape, heads, window, bias=bias)
    scale = 0.7
    _check(reference(q, k, v, heads, window, shift, table, scale),
           brute_force(q, k, v, heads, window, shift, table, scale), torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape, heads, window, shift", CASES, ids=CASE_IDS)
def test_forward_matches_reference(backend, shape, heads, window, shift):
    q, k, v, table = _inputs(shape, heads, window, seed=len(CASE_IDS))
    ref = reference(q, k, v, heads, window, shift, table)
    dev = device_of(backend)
    for dtype in (torch.float64, torch.float32):
        args = [t.to(dev, dtype) for t in (q, k, v, table)]
        out = vos_kernels.clip_window_attention(*args[:3], num_heads=heads, window=window, shift=shift,
                                                rel_pos_bias=args[3], backend=backend)
        assert out.shape == shape and out.dtype == dtype and out.is_contiguous()
        _check(out, ref, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_bias_and_custom_scale(backend):
    shape, heads, window, shift = CASES[0]
    q, k, v, _ = _inputs(shape, heads, window, device=device_of(backend))
    out = vos_kernels.clip_window_attention(q, k, v, num_heads=heads, window=window, shift=shift, scale=0.31,
                                            backend=backend)
    _check(out, reference(q, k, v, heads, window, shift, None, 0.31), torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shift", [(0, 0, 0), (1, 3, 3)])
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_equals_video_swin_when_axes_are_multiples(backend, shift, attention):
    shape, heads, window = (2, 4, 14, 21, 16), 2, (2, 7, 7)
    q, k, v, table = _inputs(shape, heads, window, device=device_of(backend), seed=5)
    out = vos_kernels.clip_window_attention(q, k, v, num_heads=heads, window=window, shift=shift,
                                            rel_pos_bias=table, backend=backend)
    _check(out, video_swin_window_attention(q, k, v, heads, window, shift, table, attention=attention), torch.float64)


def test_video_swin_padding_differs_at_partial_windows():
    """Video Swin's zero padding tokens take part as keys; the contract's partial windows do not."""
    shape, heads, window = (1, 3, 9, 10, 8), 2, (2, 7, 7)
    q, k, v, table = _inputs(shape, heads, window)
    swin = video_swin_window_attention(q, k, v, heads, window, (0, 0, 0), table)
    ours = reference(q, k, v, heads, window, (0, 0, 0), table)
    torch.testing.assert_close(ours[:, :2, :7, :7], swin[:, :2, :7, :7])    # full windows agree
    assert (ours[:, 2] - swin[:, 2]).abs().max() > 1e-3                      # the partial frame does not


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_cpu(dtype):
    """flash-attention rule: error vs float64 at most twice that of the eager reference on the same
    dtype inputs (which computes in float32 and rounds its output to dtype)."""
    shape, heads, window, shift = CASES[5]
    q, k, v, table = _inputs(shape, heads, window, seed=3)
    exact = reference(q, k, v, heads, window, shift, table)
    low = [t.to(dtype) for t in (q, k, v, table)]
    out = vos_kernels.clip_window_attention(*low[:3], num_heads=heads, window=window, shift=shift,
                                            rel_pos_bias=low[3], backend="cpu")
    assert out.dtype == dtype
    eager_out = reference(*low[:3], heads, window, shift, low[3])
    kernel_error = (out.double() - exact).abs().max().item()
    eager_error = (eager_out.double() - exact).abs().max().item()
    assert kernel_error <= 2 * eager_error + 1e-3, (kernel_error, eager_error)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    B, L, H, W, C, heads, window, shift = 1, 3, 9, 10, 12, 3, (2, 3, 4), (1, 1, 2)
    dev = device_of(backend)
    g = torch.Generator().manual_seed(11)
    qkv = torch.randn(B, L, H, W, 3 * C, generator=g, dtype=torch.float64).to(dev)     # one projection, chunked
    q, k, v = qkv.chunk(3, dim=-1)
    channels_first = torch.randn(B, C, L, H, W, generator=g, dtype=torch.float64).to(dev).permute(0, 2, 3, 4, 1)
    table = torch.randn(2 * _rows(window), heads, generator=g, dtype=torch.float64).to(dev)[::2]
    for query in (q, channels_first):
        assert not query.is_contiguous() and not table.is_contiguous()
        out = vos_kernels.clip_window_attention(query, k, v, num_heads=heads, window=window, shift=shift,
                                                rel_pos_bias=table, backend=backend)
        _check(out, reference(query.contiguous(), k.contiguous(), v.contiguous(), heads, window, shift,
                              table.contiguous()), torch.float64)


def _grads(fn, tensors, grad_out):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    return [g.double().cpu() for g in torch.autograd.grad(fn(*leaves), leaves, grad_out)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", [0, 1, 3, 5], ids=[CASE_IDS[i] for i in (0, 1, 3, 5)])
def test_gradients_match_reference(backend, case):
    """query, key, value and bias-table gradients: float64 tight; float32 by the flash-attention rule."""
    shape, heads, window, shift = CASES[case]
    dev = device_of(backend)
    tensors = _inputs(shape, heads, window, seed=case)
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(99), dtype=torch.float64)

    def run(q, k, v, table):
        return vos_kernels.clip_window_attention(q, k, v, num_heads=heads, window=window, shift=shift,
                                                 rel_pos_bias=table, backend=backend)

    def ref(q, k, v, table):
        return reference(q, k, v, heads, window, shift, table)

    exact = _grads(ref, tensors, grad_out)
    ours = _grads(run, [t.to(dev) for t in tensors], grad_out.to(dev))
    for name, a, b in zip("qkvb", ours, exact):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=f"grad {name}")
    ours32 = _grads(run, [t.to(dev, torch.float32) for t in tensors], grad_out.to(dev, torch.float32))
    eager32 = _grads(ref, [t.float() for t in tensors], grad_out.float())
    for name, a, e, x in zip("qkvb", ours32, eager32, exact):
        kernel_error, eager_error = (a - x).abs().max().item(), (e - x).abs().max().item()
        assert kernel_error <= 2 * eager_error + 1e-6 * x.abs().max().item(), (name, kernel_error, eager_error)


@needs_cpu
def test_gradcheck_float64_cpu():
    shape, heads, window, shift = (1, 3, 3, 4, 4), 2, (2, 2, 3), (1, 1, 2)   # partial windows on every axis
    tensors = [t.requires_grad_() for t in _inputs(shape, heads, window, seed=1)]
    fn = lambda q, k, v, b: vos_kernels.clip_window_attention(  # noqa: E731
        q, k, v, num_heads=heads, window=window, shift=shift, rel_pos_bias=b, backend="cpu")
    assert torch.autograd.gradcheck(fn, tensors)


@needs_cpu
def test_bias_gradient_is_deterministic_across_thread_counts():
    shape, heads, window, shift = (2, 5, 15, 17, 16), 4, (2, 7, 7), (1, 3, 3)
    q, k, v, table = _inputs(shape, heads, window, dtype=torch.float32, seed=4)
    grad_out = torch.randn(shape)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(torch.ops.vos_kernels.clip_window_attention_backward(
                grad_out, q, k, v, table, heads, list(window), list(shift), 0.5))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(backend, bias):
    shape, heads, window, shift = (1, 3, 4, 5, 8), 2, (2, 3, 3), (1, 1, 2)
    q, k, v, table = (None if t is None else t.float().requires_grad_()
                      for t in _inputs(shape, heads, window, device=device_of(backend), bias=bias))
    torch.library.opcheck(torch.ops.vos_kernels.clip_window_attention.default,
                          (q, k, v, table, heads, list(window), list(shift), 0.4, backend))


@needs_cpu
def test_opcheck_cpp_kernels():
    shape, heads, window, shift = (1, 3, 4, 5, 8), 2, (2, 3, 3), (1, 1, 2)
    q, k, v, table = (t.float() for t in _inputs(shape, heads, window))
    args = (heads, list(window), list(shift), 0.4)
    torch.library.opcheck(torch.ops.vos_kernels.clip_window_attention_forward.default, (q, k, v, table, *args))
    torch.library.opcheck(torch.ops.vos_kernels.clip_window_attention_forward.default, (q, k, v, None, *args))
    torch.library.opcheck(torch.ops.vos_kernels.clip_window_attention_backward.default,
                          (torch.randn_like(q), q, k, v, table, *args))


@needs_cpu
def test_torch_compile_fullgraph_no_recompiles():
    torch._dynamo.reset()
    heads, window, shift = 2, (2, 3, 3), (1, 1, 2)
    table = torch.randn(_rows(window), heads, requires_grad=True)

    def layer(x):
        q, k, v = torch.relu(x).chunk(3, dim=-1)
        return vos_kernels.clip_window_attention(q, k, v, num_heads=heads, window=window, shift=shift,
                                                 rel_pos_bias=table) * 2

    compiled = torch.compile(layer, fullgraph=True, dynamic=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for shape in [(3, 4, 5, 7, 24), (4, 5, 6, 9, 24), (5, 3, 7, 6, 24)]:  # distinct sizes: no duck-sizing guards
            x = torch.randn(shape, requires_grad=True)
            out = compiled(x)
            torch.testing.assert_close(out, layer(x), rtol=1e-5, atol=1e-6)
            out.sum().backward()
            assert x.grad is not None and torch.isfinite(x.grad).all()
    torch._dynamo.reset()
    x = torch.randn(1, 1, 4, 5, 24)                                   # batch 1 and L = 1 compile too
    torch.testing.assert_close(torch.compile(layer, fullgraph=True)(x), layer(x), rtol=1e-5, atol=1e-6)


@needs_cpu
@pytest.mark.parametrize("seed", range(6))
def test_random_sweep_cpu(seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    window = (r(1, 3), r(1, 5), r(1, 5))
    shift = tuple(r(0, w - 1) for w in window)
    heads = r(1, 3)
    shape = (r(1, 2), r(1, 5), r(1, 9), r(1, 9), heads * r(1, 9))
    q, k, v, table = _inputs(shape, heads, window, bias=bool(seed % 2), seed=seed)
    out = vos_kernels.clip_window_attention(q, k, v, num_heads=heads, window=window, shift=shift,
                                            rel_pos_bias=table, backend="cpu")
    _check(out, reference(q, k, v, heads, window, shift, table), torch.float64)


@needs_cpu
def test_cpp_kernel_writes_every_element():
    shape, heads, window, shift = (1, 3, 10, 11, 8), 2, (2, 7, 7), (1, 3, 3)
    q, k, v, table = (t.float() for t in _inputs(shape, heads, window))
    for _ in range(3):  # the allocator hands the NaN-poisoned blocks back to the kernel's outputs
        poison = [torch.full(shape, float("nan")) for _ in range(4)]
        del poison
        out = torch.ops.vos_kernels.clip_window_attention_forward(q, k, v, table, heads, list(window), list(shift), 0.5)
        grads = torch.ops.vos_kernels.clip_window_attention_backward(torch.ones_like(q), q, k, v, table, heads,
                                                                     list(window), list(shift), 0.5)
        assert all(torch.isfinite(t).all() for t in (out, *grads))


def test_empty_batch():
    q = torch.randn(0, 2, 3, 4, 8)
    for backend in ["reference"] + (["cpu"] if HAS_CPU else []):
        out = vos_kernels.clip_window_attention(q, q, q, num_heads=2, backend=backend)
        assert out.shape == q.shape


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(num_heads=3), ValueError, "channels C = 8 must be divisible by num_heads = 3"),
    (dict(num_heads=0), ValueError, "num_heads must be an int >= 1, got 0"),
    (dict(num_heads=2, window=(2, 7)), ValueError, "window must be 3 ints >= 1, got \\(2, 7\\)"),
    (dict(num_heads=2, shift=(2, 3, 3)), ValueError, "every shift must be smaller than its window"),
    (dict(num_heads=2, rel_pos_bias=torch.randn(10, 2)), ValueError,
     "rel_pos_bias must be \\(T, num_heads\\) = \\(507, 2\\) for window \\(2, 7, 7\\), got shape \\(10, 2\\)"),
    (dict(num_heads=2, scale=-1.0), ValueError, "scale must be > 0, got -1.0"),
    (dict(num_heads=2, backend="fast"), ValueError, "backend must be one of"),
])
def test_bad_arguments(kwargs, error, match):
    q = torch.randn(1, 2, 3, 4, 8)
    with pytest.raises(error, match=match):
        vos_kernels.clip_window_attention(q, q, q, **kwargs)


def test_bad_tensors():
    q = torch.randn(1, 2, 3, 4, 8)
    with pytest.raises(ValueError, match="query must have 5 dimensions, got shape \\(2, 3, 4, 8\\)"):
        vos_kernels.clip_window_attention(q[0], q[0], q[0], num_heads=2)
    with pytest.raises(ValueError, match="query, key and value must have one shape"):
        vos_kernels.clip_window_attention(q, q[:, :1], q, num_heads=2)
    with pytest.raises(TypeError, match="value must have the same dtype as query"):
        vos_kernels.clip_window_attention(q, q, q.double(), num_heads=2)
    with pytest.raises(TypeError, match="key must have a floating dtype .* got torch.int64"):
        vos_kernels.clip_window_attention(q, q.long(), q, num_heads=2)


def test_triton_without_gpu_or_interpreter_says_why(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q = torch.randn(1, 2, 3, 4, 8)
    with pytest.raises(ValueError, match="backend 'triton' needs CUDA tensors"):
        vos_kernels.clip_window_attention(q, q, q, num_heads=2, backend="triton")
