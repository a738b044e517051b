"""clip_window_attention (docs/ops.md §4): the reference against a per-token loop and against
Video Swin's pad + roll + mask formulation; the shared op tester (tests/op_tester.py) on every
backend, Triton under the interpreter included; gradcheck, determinism, the C++ kernels' checks."""
import itertools

import pytest
import torch

import vos_kernels
from kernel_utils import backend_params, device_of, tolerance
from op_tester import OpTester
from vos_kernels.reference.clip_window_attention import clip_window_attention_reference as reference
from vos_kernels.reference.video_swin_window_attention import video_swin_window_attention

# float64 and large windows: the Triton interpreter runs the shared tester only (small cases below)
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
# Small enough for the Triton interpreter (which runs programs one by one in Python).
INTERPRETED = [((1, 3, 5, 6, 8), 2, (2, 3, 4), (1, 1, 2)), ((2, 1, 4, 5, 8), 2, (2, 7, 7), (1, 3, 3)),
               ((1, 2, 7, 9, 16), 1, (2, 7, 7), (0, 0, 0))]
_Q = torch.randn(1, 2, 3, 4, 8)


class TestClipWindowAttention(OpTester):
    op = "clip_window_attention"
    # (shape, heads, window, shift, with a bias table)
    cases = [(*c, True) for c in CASES + INTERPRETED] + [(*INTERPRETED[2], False)]
    interpreted_cases = [(*c, True) for c in INTERPRETED] + [(*INTERPRETED[2], False)]
    dtype_case = (*CASES[5], True)
    grad_cases = [(*CASES[i], True) for i in (0, 1, 3, 5)] + interpreted_cases
    low_precision_atol = {torch.float16: 1e-3, torch.bfloat16: 1e-3}
    bad_inputs = [((_Q, _Q, _Q), kwargs, error, match) for kwargs, error, match in [
        (dict(num_heads=3), ValueError, "channels C = 8 must be divisible by num_heads = 3"),
        (dict(num_heads=0), ValueError, "num_heads must be >= 1, got 0"),
        (dict(num_heads=2, window=(2, 7)), ValueError, "window must be 3 ints >= 1, got \\(2, 7\\)"),
        (dict(num_heads=2, shift=(2, 3, 3)), ValueError, "every shift must be smaller than its window"),
        (dict(num_heads=2, rel_pos_bias=torch.randn(10, 2)), ValueError,
         "rel_pos_bias must be \\(T, num_heads\\) = \\(507, 2\\) for window \\(2, 7, 7\\), got shape \\(10, 2\\)"),
        (dict(num_heads=2, scale=-1.0), ValueError, "scale must be > 0, got -1.0"),
        (dict(num_heads=2, backend="fast"), ValueError, "backend must be one of")]] + [
        ((_Q[0], _Q[0], _Q[0]), dict(num_heads=2), ValueError, "query must have 5 dimensions, got shape \\(2, 3, 4, 8\\)"),
        ((_Q, _Q[:, :1], _Q), dict(num_heads=2), ValueError, "query, key and value must have one shape"),
        ((_Q, _Q, _Q.double()), dict(num_heads=2), TypeError, "value must have the same dtype as query"),
        ((_Q, _Q.long(), _Q), dict(num_heads=2), TypeError, "key must have a floating dtype .* got torch.int64")]

    def make_case(self, case, seed=0):
        shape, heads, window, shift, bias = case
        return _inputs(shape, heads, window, bias=bias, seed=seed), dict(num_heads=heads, window=window, shift=shift)

    def call(self, tensors, options, backend):
        q, k, v, table = tensors
        return vos_kernels.clip_window_attention(q, k, v, rel_pos_bias=table, backend=backend, **options)

    def reference(self, tensors, options):
        q, k, v, table = tensors
        return reference(q, k, v, options["num_heads"], options["window"], options["shift"], table)

    def schema_args(self, tensors, options, backend):
        return (*tensors, options["num_heads"], list(options["window"]), list(options["shift"]), 0.4, backend), {}

    def non_contiguous_cases(self, device):
        B, L, H, W, C, heads, window, shift = 1, 3, 9, 10, 12, 3, (2, 3, 4), (1, 1, 2)
        g = torch.Generator().manual_seed(11)
        qkv = torch.randn(B, L, H, W, 3 * C, generator=g).to(device)     # one projection, chunked
        q, k, v = qkv.chunk(3, dim=-1)
        channels_first = torch.randn(B, C, L, H, W, generator=g).to(device).permute(0, 2, 3, 4, 1)
        table = torch.randn(2 * _rows(window), heads, generator=g).to(device)[::2]
        options = dict(num_heads=heads, window=window, shift=shift)
        return [((q, k, v, table), options), ((channels_first, k, v, table), options)]

    def compile_cases(self):
        # distinct sizes: no duck-sizing guards
        heads, window, shift = 2, (2, 3, 3), (1, 1, 2)
        return [(_inputs(shape, heads, window, seed=i), dict(num_heads=heads, window=window, shift=shift))
                for i, shape in enumerate([(3, 4, 5, 7, 8), (4, 5, 6, 9, 8), (5, 3, 7, 6, 8)])]




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


def test_triton_without_gpu_or_interpreter_says_why(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q = torch.randn(1, 2, 3, 4, 8)
    with pytest.raises(ValueError, match="backend 'triton' needs CUDA tensors"):
        vos_kernels.clip_window_attention(q, q, q, num_heads=2, backend="triton")


@pytest.mark.triton
@pytest.mark.parametrize("backend", backend_params(("triton",)))
def test_triton_window_too_large_says_why(backend):
    q = torch.randn(1, 1, 2, 2, 8, device=device_of(backend))
    with pytest.raises(NotImplementedError, match="at most 256 tokens.*got window \\(3, 9, 10\\)"):
        vos_kernels.clip_window_attention(q, q, q, num_heads=2, window=(3, 9, 10), backend="triton")


@pytest.mark.triton
@pytest.mark.parametrize("backend", backend_params(("triton",)))
def test_triton_equals_video_swin_when_axes_are_multiples(backend):
    shape, heads, window, shift = (1, 2, 7, 7, 8), 2, (2, 7, 7), (1, 3, 3)
    q, k, v, table = _inputs(shape, heads, window, seed=2)
    out = vos_kernels.clip_window_attention(*(t.float().to(device_of(backend)) for t in (q, k, v)), num_heads=heads,
                                            window=window, shift=shift, rel_pos_bias=table.float().to(device_of(backend)),
                                            backend=backend)
    torch.testing.assert_close(out.double().cpu(), video_swin_window_attention(q, k, v, heads, window, shift, table),
                               rtol=2e-5, atol=2e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: checks auto's routing on a real GPU")
@pytest.mark.parametrize("requires_grad", [False, True])
def test_cuda_auto_routes_pcvos_head_dim_to_a_backend_that_fits(requires_grad):
    """PCVOS's window attention (window 2x7x7, one head of 512 channels) does not fit the CUDA
    kernel's shared memory; "auto" must pick a backend that serves it and match the reference."""
    from vos_kernels.ops.clip_window_attention import _preference

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 14, 21, 512, generator=gen).cuda().requires_grad_(requires_grad) for _ in range(3))
    window, shift = [2, 7, 7], [0, 3, 3]
    triton_ok = vos_kernels.available_backends()["triton"][0]
    expected_order = {"cuda": ("triton", "cuda")}
    assert _preference(q, k, v, None, 1, window, shift, 512 ** -0.5) == expected_order
    if not triton_ok:  # the CUDA kernel is the only fused choice: it must refuse, naming shared memory
        with pytest.raises(RuntimeError, match="shared memory"):
            vos_kernels.clip_window_attention(q, k, v, num_heads=1, window=window, shift=shift)
        return
    out = vos_kernels.clip_window_attention(q, k, v, num_heads=1, window=window, shift=shift)
    ref = vos_kernels.clip_window_attention(q.double(), k.double(), v.double(), num_heads=1, window=window,
                                            shift=shift, backend="reference")
    # fp32 dots at torch's default matmul precision ("highest"): IEEE fp32 over 98 keys x 512 dims
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)
    if requires_grad:
        out.square().sum().backward()
        assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))
