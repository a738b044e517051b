"""clip_window_attention on the Triton backend: on a GPU directly, on CPU under TRITON_INTERPRET=1.

The interpreter must be switched on before triton is imported, so without a GPU and without
TRITON_INTERPRET set, this module runs itself again in a subprocess that sets it. Sizes are tiny
(the interpreter runs programs one by one in Python); bfloat16 is tested on GPUs only (the
interpreter's bfloat16 tl.dot is broken, see the testing guide).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
ON_GPU = torch.cuda.is_available()
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

if not (ON_GPU or INTERPRETING):
    def test_triton_suite_under_the_interpreter():
        env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
        assert " passed" in run.stdout and "skipped" not in run.stdout.splitlines()[-1], run.stdout[-2000:]
else:
    import vos_kernels
    from vos_kernels.reference.clip_window_attention import clip_window_attention_reference as reference
    from vos_kernels.reference.video_swin_window_attention import video_swin_window_attention

    DEVICE = "cuda" if ON_GPU else "cpu"
    ok, why = vos_kernels.available_backends()["triton"]
    pytestmark = [pytest.mark.triton, pytest.mark.skipif(not ok, reason=f"triton: {why}")]

    # windows cut by the border on every axis; L = 1 with H, W smaller than the window; shift 0
    CASES = [((1, 3, 5, 6, 8), 2, (2, 3, 4), (1, 1, 2), True),
             ((2, 1, 4, 5, 8), 2, (2, 7, 7), (1, 3, 3), True),
             ((1, 2, 7, 9, 16), 1, (2, 7, 7), (0, 0, 0), False)]

    def _inputs(shape, heads, window, bias=True, seed=0):
        g = torch.Generator().manual_seed(seed)
        q, k, v = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))
        rows = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
        return q, k, v, (torch.randn(rows, heads, generator=g, dtype=torch.float64) if bias else None)

    def _run(q, k, v, heads, window, shift, table):
        return vos_kernels.clip_window_attention(q, k, v, num_heads=heads, window=window, shift=shift,
                                                 rel_pos_bias=table, backend="triton")

    def _dev(tensors, dtype=torch.float32):
        return [None if t is None else t.to(DEVICE, dtype) for t in tensors]

    @pytest.mark.parametrize("shape, heads, window, shift, bias", CASES)
    def test_forward_and_gradients_match_reference(shape, heads, window, shift, bias):
        tensors = _inputs(shape, heads, window, bias)
        grad_out = torch.randn(shape, dtype=torch.float64)
        leaves = [t.clone().requires_grad_() for t in tensors if t is not None]
        ref = reference(*leaves[:3], heads, window, shift, leaves[3] if bias else None)
        exact = torch.autograd.grad(ref, leaves, grad_out)
        ours_leaves = [t.requires_grad_() for t in _dev(tensors) if t is not None]
        out = _run(*ours_leaves[:3], heads, window, shift, ours_leaves[3] if bias else None)
        assert out.is_contiguous() and not torch.isnan(out).any()
        torch.testing.assert_close(out.double().cpu(), ref.detach(), rtol=2e-5, atol=2e-5)
        ours = torch.autograd.grad(out, ours_leaves, grad_out.to(DEVICE, torch.float32))
        for name, a, b in zip("qkvb", ours, exact):
            torch.testing.assert_close(a.double().cpu(), b, rtol=1e-4, atol=1e-4, msg=f"grad {name}")

    def test_equals_video_swin_when_axes_are_multiples():
        shape, heads, window, shift = (1, 2, 7, 7, 8), 2, (2, 7, 7), (1, 3, 3)
        q, k, v, table = _inputs(shape, heads, window, seed=2)
        out = _run(*_dev((q, k, v)), heads, window, shift, _dev([table])[0])
        torch.testing.assert_close(out.double().cpu(), video_swin_window_attention(q, k, v, heads, window, shift, table),
                                   rtol=2e-5, atol=2e-5)

    def test_non_contiguous_inputs():
        heads, window, shift = 2, (2, 3, 4), (1, 1, 2)
        g = torch.Generator().manual_seed(5)
        qkv = torch.randn(1, 3, 5, 6, 24, generator=g).to(DEVICE)
        q, k, v = qkv.chunk(3, dim=-1)
        k = torch.randn(1, 8, 3, 5, 6, generator=g).to(DEVICE).permute(0, 2, 3, 4, 1)
        table = torch.randn(210, heads, generator=g).to(DEVICE)[::2]  # (105, heads), strided
        out = _run(q, k, v, heads, window, shift, table)
        ref = reference(*(t.double().cpu() for t in (q, k, v)), heads, window, shift, table.double().cpu())
        torch.testing.assert_close(out.double().cpu(), ref, rtol=2e-5, atol=2e-5)

    @pytest.mark.parametrize("dtype", [torch.float16] + ([torch.bfloat16] if ON_GPU else []))
    def test_low_precision(dtype):
        """flash-attention rule against the float64 reference."""
        shape, heads, window, shift, _ = CASES[0]
        tensors = _inputs(shape, heads, window, seed=3)
        exact = reference(*tensors[:3], heads, window, shift, tensors[3])
        low = _dev(tensors, dtype)
        out = _run(*low[:3], heads, window, shift, low[3])
        assert out.dtype == dtype
        eager = reference(*(t.cpu() for t in low[:3]), heads, window, shift, low[3].cpu())
        kernel_error = (out.double().cpu() - exact).abs().max().item()
        eager_error = (eager.double() - exact).abs().max().item()
        assert kernel_error <= 2 * eager_error + 1e-3, (kernel_error, eager_error)

    def test_opcheck():
        shape, heads, window, shift = (1, 2, 3, 4, 8), 2, (2, 2, 3), (1, 1, 2)
        q, k, v, table = (t.requires_grad_() for t in _dev(_inputs(shape, heads, window, seed=4)))
        torch.library.opcheck(torch.ops.vos_kernels.clip_window_attention.default,
                              (q, k, v, table, heads, list(window), list(shift), 0.4, "triton"))

    def test_window_too_large_says_why():
        q = torch.randn(1, 1, 2, 2, 8, device=DEVICE)
        with pytest.raises(NotImplementedError, match="at most 256 tokens.*got window \\(3, 9, 10\\)"):
            _run(q, q, q, 2, (3, 9, 10), (0, 0, 0), None)
