"""template_update's Triton kernels, under TRITON_INTERPRET=1 on CPU (tests/conftest.py sets it
when there is no GPU) or on a GPU. Small shapes: the interpreter runs programs one at a time.

Both forward paths are covered: DIRECT (one program holds whole rows over all of P) and the
split path (P split over programs, or Ct wider than one column tile: atomics into a scratch,
the last program of a row block finishes it)."""
import pytest
import torch

import vos_kernels
from vos_kernels.reference import template_update_reference

status = vos_kernels.available_backends()["triton"]
pytestmark = [pytest.mark.triton, pytest.mark.skipif(not status[0], reason=f"triton: {status[1]}")]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_inputs(B, Nt, Ct, P, *, dtype=torch.float32, seed=0, template=True):
    g = torch.Generator().manual_seed(seed)
    key = torch.randn(B, Nt, P, generator=g, dtype=torch.float64)
    value = torch.randn(B, Ct, P, generator=g, dtype=torch.float64)
    tmpl = torch.softmax(torch.randn(B, Nt, Ct, generator=g, dtype=torch.float64), -1) if template else None
    weight = torch.rand(B, generator=g, dtype=torch.float64) * 2 if template else None
    return [None if t is None else t.to(DEVICE, dtype) for t in (key, value, tmpl, weight)]


def _exact(*tensors, scale=None):
    return template_update_reference(*[None if t is None else t.double().cpu() for t in tensors], scale=scale)


# (B, Nt, Ct, P, split): P = 1, Nt != Ct both ways, Ct over one 128-wide column tile, 16 objects.
CASES = [(1, 1, 1, 1, None), (2, 5, 7, 37, None), (2, 5, 7, 37, 3), (1, 33, 150, 70, None), (1, 33, 150, 70, 4),
         (3, 17, 20, 1, 5), (16, 4, 3, 9, None), (1, 70, 24, 100, 2)]


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("with_template", [False, True], ids=["init", "blend"])
def test_forward_paths_match_reference(case, with_template):
    from vos_kernels.triton.template_update import template_update_forward_triton
    B, Nt, Ct, P, split = case
    key, value, tmpl, weight = make_inputs(B, Nt, Ct, P, seed=P, template=with_template)
    out = torch.full((B, Nt, Ct), float("nan"))  # poison: a reused NaN block must be overwritten
    del out
    out, incoming = template_update_forward_triton(key, value, tmpl, weight, 0.2, split=split)
    torch.testing.assert_close(out.double().cpu(), _exact(key, value, tmpl, weight, scale=0.2), rtol=2e-5, atol=2e-5)
    if with_template:
        torch.testing.assert_close(incoming.double().cpu(), _exact(key, value, scale=0.2), rtol=2e-5, atol=2e-5)
    else:
        assert incoming.numel() == 0


def test_public_api_non_contiguous_and_float16():
    key, value, tmpl, weight = make_inputs(2, 9, 6, 40, seed=4)
    views = (key.transpose(1, 2).contiguous().transpose(1, 2), torch.stack([value, value], 2).flatten(1, 2)[:, ::2],
             tmpl.transpose(1, 2).contiguous().transpose(1, 2), torch.stack([weight, weight], 1)[:, 0])
    out = vos_kernels.template_update(*views, backend="triton")
    torch.testing.assert_close(out.double().cpu(), _exact(key, value, tmpl, weight), rtol=2e-5, atol=2e-5)
    half = [t.half() for t in (key, value, tmpl, weight)]
    out = vos_kernels.template_update(*half, backend="triton")
    exact = _exact(*half)
    eager_error = (template_update_reference(*[t.cpu() for t in half]).double() - exact).abs().max().item()
    assert (out.double().cpu() - exact).abs().max().item() <= 2 * eager_error + 2e-4


@pytest.mark.parametrize("with_template", [False, True], ids=["init", "blend"])
def test_gradients_match_reference(with_template):
    key, value, tmpl, weight = make_inputs(3, 7, 10, 19, seed=5, template=with_template)
    leaves = [t for t in (key, value, tmpl, weight) if t is not None]
    grad_out = torch.randn(3, 7, 10, generator=torch.Generator().manual_seed(1)).to(DEVICE)

    def grads(fn, tensors):
        tensors = [t.detach().clone().requires_grad_() for t in tensors]
        args = tensors + [None] * (4 - len(tensors))
        return torch.autograd.grad(fn(*args), tensors, grad_out.to(tensors[0].dtype))

    got = grads(lambda *a: vos_kernels.template_update(*a, backend="triton"), leaves)
    exact = grads(template_update_reference, [t.double().cpu() for t in leaves])
    for a, b in zip(got, exact):
        torch.testing.assert_close(a.double().cpu(), b, rtol=1e-4, atol=1e-5)


def test_gradients_through_successive_updates():
    frames = 4
    g = torch.Generator().manual_seed(2)
    keys = torch.randn(frames, 2, 5, 13, generator=g, dtype=torch.float64)
    values = torch.randn(frames, 2, 6, 13, generator=g, dtype=torch.float64)
    weights = torch.rand(frames - 1, 2, generator=g, dtype=torch.float64) * 3

    def grads(update, dtype, device):
        ks, vs, ws = (t.to(device, dtype).requires_grad_() for t in (keys, values, weights))
        tmpl = update(ks[0], vs[0], None, None)
        for t in range(1, frames):
            tmpl = update(ks[t], vs[t], tmpl, ws[t - 1])
        return torch.autograd.grad((tmpl * tmpl).sum(), (ks, vs, ws))

    got = grads(lambda *a: vos_kernels.template_update(*a, backend="triton"), torch.float32, DEVICE)
    exact = grads(template_update_reference, torch.float64, "cpu")
    for a, b in zip(got, exact):
        torch.testing.assert_close(a.double().cpu(), b, rtol=1e-4, atol=1e-5)


def test_opcheck():
    template_update_with_incoming_op = torch.ops.vos_kernels.template_update_with_incoming.default
    key, value, tmpl, weight = [t.requires_grad_() for t in make_inputs(2, 5, 7, 11)]
    torch.library.opcheck(template_update_with_incoming_op, (key, value, tmpl, weight, None, "triton"))


def test_float64_is_refused_with_a_reason():
    key, value, _, _ = make_inputs(1, 2, 3, 4, dtype=torch.float64)
    with pytest.raises(TypeError, match="triton backend supports .* got torch.float64"):
        vos_kernels.template_update(key, value, backend="triton")
