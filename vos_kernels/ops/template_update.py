"""template_update: the TTVOS template outer-product update (ops.md §3), its custom ops,
autograd formula, fake kernels and backend choice.

    I   = softmax(key @ value^T * scale, dim=-1)        key (B, Nt, P), value (B, Ct, P)
    out = I                                             when template is None (LT_0)
        = template / (1 + w) + I * w / (1 + w)          otherwise, w = weight[b] >= 0

Two ops are registered:
  vos_kernels::template_update_with_incoming(key, value, template?, weight?, scale?, backend)
      -> (out, incoming): the differentiable custom op. `incoming` is I when a template is given
      (the backward needs it and cannot recover it from out when w = 0) and an empty (0,) tensor
      otherwise (out is I then). It runs the chosen backend:
        cpu, cuda  -> the C++ ops torch.ops.vos_kernels.template_update_{forward,backward}
        triton     -> vos_kernels.triton.template_update
        reference  -> the eager reference (backward: the reference's vector-Jacobian product)
  vos_kernels::template_update(key, value, template?, weight?, scale?, backend) -> out: the
      user-facing op, a composite of the one above (so torch.ops.vos_kernels.template_update
      returns one tensor, and autograd, fake tensors and torch.compile go through the inner op).
"""
from __future__ import annotations

import math

import torch

from .. import _library
from .._checks import check_positive_float, check_same_device, check_same_dtype, check_tensor
from .._dispatch import resolve_backend
from ..reference.template_update import template_update_reference

OP = "template_update"
IMPLEMENTED = ("cpu", "cuda", "triton", "reference")


def output_shape(key_shape, value_shape) -> tuple[int, int, int]:
    """(B, Nt, P), (B, Ct, P) -> (B, Nt, Ct): the one shape rule of this op."""
    return (key_shape[0], key_shape[1], value_shape[1])


def incoming_shape(key_shape, value_shape, has_template: bool) -> tuple[int, ...]:
    """Shape of the saved I: (B, Nt, Ct) with a template, else (0,) (out is I then)."""
    return output_shape(key_shape, value_shape) if has_template else (0,)


def default_scale(p: int) -> float:
    """1 / sqrt(P), as the public TTVOS code does."""
    return 1.0 / math.sqrt(p)


def validate(key, value, template, weight, scale) -> None:
    check_tensor(OP, "key", key, dim=3)
    check_tensor(OP, "value", value, dim=3)
    if template is not None:
        check_tensor(OP, "template", template, dim=3)
        if weight is None:
            raise ValueError(f"{OP}: weight (B,) is required when a template is given")
    if weight is not None:
        if template is None:
            raise ValueError(f"{OP}: weight was given without a template (the initial template takes no weight)")
        check_tensor(OP, "weight", weight, dim=1)
    check_same_device(OP, key=key, value=value, template=template, weight=weight)
    check_same_dtype(OP, key=key, value=value, template=template, weight=weight)
    (b, nt, p), (bv, ct, pv) = key.shape, value.shape
    if bv != b or pv != p:
        raise ValueError(f"{OP}: value must be (B, Ct, P) with B = {b} and P = {p} like key, got shape "
                         f"{tuple(value.shape)}")
    if p == 0:
        raise ValueError(f"{OP}: key and value must have P >= 1 positions, got P = 0")
    if template is not None and tuple(template.shape) != (b, nt, ct):
        raise ValueError(f"{OP}: template must be (B, Nt, Ct) = {(b, nt, ct)}, got shape {tuple(template.shape)}")
    if weight is not None and weight.shape[0] != b:
        raise ValueError(f"{OP}: weight must be (B,) = ({b},), got shape {tuple(weight.shape)}")
    if scale is not None:
        check_positive_float(OP, "scale", scale)


def _scale_of(scale: float | None, key: torch.Tensor) -> float:
    return default_scale(key.shape[-1]) if scale is None else float(scale)


def _empty_like_key(key: torch.Tensor) -> torch.Tensor:
    return key.new_empty((0,))


def _forward(key, value, template, weight, scale: float, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "triton":
        from ..triton.template_update import template_update_forward_triton
        return template_update_forward_triton(key, value, template, weight, scale)
    if backend in ("cpu", "cuda"):
        return torch.ops.vos_kernels.template_update_forward(key, value, template, weight, scale)
    out = template_update_reference(key, value, template, weight, scale=scale).contiguous()
    if template is None:
        return out, _empty_like_key(key)
    return out, template_update_reference(key, value, scale=scale).contiguous()


def _reference_backward(grad_out, key, value, template, weight, scale: float):
    if template is None:
        _, vjp = torch.func.vjp(lambda k, v: template_update_reference(k, v, scale=scale), key, value)
        return (*vjp(grad_out), _empty_like_key(key), _empty_like_key(key))
    _, vjp = torch.func.vjp(lambda k, v, t, w: template_update_reference(k, v, t, w, scale=scale),
                            key, value, template, weight)
    return vjp(grad_out)


def _backward(grad_out, key, value, incoming, template, weight, scale: float, backend: str,
              need_key: bool, need_value: bool) -> tuple[torch.Tensor, ...]:
    if backend == "triton":
        from ..triton.template_update import template_update_backward_triton
        grads = template_update_backward_triton(grad_out, key, value, incoming, template, weight, scale,
                                                need_key, need_value)
    elif backend in ("cpu", "cuda"):
        grads = torch.ops.vos_kernels.template_update_backward(grad_out, key, value, incoming, template, weight,
                                                               scale, need_key, need_value)
    else:
        grads = _reference_backward(grad_out, key, value, template, weight, scale)
    grad_key, grad_value, grad_template, grad_weight = grads
    # One convention for every backend: what was not asked for is an empty (0,) tensor.
    return (grad_key.contiguous() if need_key else _empty_like_key(key),
            grad_value.contiguous() if need_value else _empty_like_key(key),
            grad_template.contiguous(), grad_weight.contiguous())


def _concrete(backend: str, key: torch.Tensor) -> str:
    return resolve_backend(OP, None if backend == "auto" else backend, key.device, IMPLEMENTED)


@torch.library.custom_op("vos_kernels::template_update_with_incoming", mutates_args=())
def template_update_with_incoming_op(key: torch.Tensor, value: torch.Tensor, template: torch.Tensor | None,
                                     weight: torch.Tensor | None, scale: float | None = None,
                                     backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, Nt, Ct), incoming (B, Nt, Ct) with a template, else (0,)); see the module docstring.

    scale None means 1 / sqrt(P), resolved here on the concrete P (a float computed from a
    symbolic P outside the op would make torch.compile guard on P's value)."""
    validate(key, value, template, weight, scale)
    return _forward(key, value, template, weight, _scale_of(scale, key), _concrete(backend, key))


@template_update_with_incoming_op.register_fake
def _(key, value, template, weight, scale=None, backend="auto"):
    validate(key, value, template, weight, scale)
    return (key.new_empty(output_shape(key.shape, value.shape)),
            key.new_empty(incoming_shape(key.shape, value.shape, template is not None)))


def grad_shapes(key_shape, value_shape, has_template: bool, need_key: bool, need_value: bool):
    """Shapes of (grad_key, grad_value, grad_template, grad_weight); (0,) for those not computed."""
    out = output_shape(key_shape, value_shape)
    return (tuple(key_shape) if need_key else (0,), tuple(value_shape) if need_value else (0,),
            out if has_template else (0,), (key_shape[0],) if has_template else (0,))


@torch.library.custom_op("vos_kernels::template_update_grad", mutates_args=())
def template_update_grad_op(grad_out: torch.Tensor, key: torch.Tensor, value: torch.Tensor, incoming: torch.Tensor,
                            template: torch.Tensor | None, weight: torch.Tensor | None, scale: float | None,
                            backend: str, need_key: bool,
                            need_value: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (key, value, template, weight) of template_update; (0,) tensors for those not needed."""
    return _backward(grad_out.to(key.dtype), key, value, incoming, template, weight, _scale_of(scale, key),
                     _concrete(backend, key), need_key, need_value)


@template_update_grad_op.register_fake
def _(grad_out, key, value, incoming, template, weight, scale, backend, need_key, need_value):
    return tuple(key.new_empty(s) for s in grad_shapes(key.shape, value.shape, template is not None, need_key,
                                                       need_value))


def _setup_context(ctx, inputs, output):
    key, value, template, weight, scale, backend = inputs
    out, incoming = output
    ctx.mark_non_differentiable(incoming)
    # I itself: the separate buffer with a template, the output without one.
    ctx.save_for_backward(key, value, incoming if template is not None else out, template, weight)
    ctx.scale, ctx.backend = scale, backend


def _backward_formula(ctx, grad_out, _grad_incoming):
    key, value, incoming, template, weight = ctx.saved_tensors
    need_key, need_value, need_template, need_weight = ctx.needs_input_grad[:4]
    grad_key, grad_value, grad_template, grad_weight = template_update_grad_op(
        grad_out, key, value, incoming, template, weight, ctx.scale, ctx.backend, need_key, need_value)
    return (grad_key if need_key else None, grad_value if need_value else None,
            grad_template if need_template else None, grad_weight if need_weight else None, None, None)


torch.library.register_autograd("vos_kernels::template_update_with_incoming", _backward_formula,
                                setup_context=_setup_context)

# The user-facing op: one output, a composite of the op above.
_lib = torch.library.Library("vos_kernels", "FRAGMENT")
_lib.define("template_update(Tensor key, Tensor value, Tensor? template=None, Tensor? weight=None, "
            "float? scale=None, str backend='auto') -> Tensor")


def _template_update_composite(key, value, template=None, weight=None, scale=None, backend="auto"):
    validate(key, value, template, weight, scale)
    return template_update_with_incoming_op(key, value, template, weight, scale, backend)[0]


_lib.impl("template_update", _template_update_composite, "CompositeImplicitAutograd")

if _library.EXTENSION_LOADED:  # fake kernels of the C++ ops (they exist only when _C loaded)
    @torch.library.register_fake("vos_kernels::template_update_forward")
    def _(key, value, template, weight, scale):
        return (key.new_empty(output_shape(key.shape, value.shape)),
                key.new_empty(incoming_shape(key.shape, value.shape, template is not None)))

    @torch.library.register_fake("vos_kernels::template_update_backward_scores")
    def _(grad_out, incoming, template, weight, scale):
        ctype = torch.float32 if incoming.dtype in (torch.float16, torch.bfloat16) else incoming.dtype
        has_template = template is not None
        return (incoming.new_empty(incoming.shape, dtype=ctype),
                incoming.new_empty(incoming.shape if has_template else (0,)),
                incoming.new_empty((incoming.shape[0],) if has_template else (0,)))

    @torch.library.register_fake("vos_kernels::template_update_backward")
    def _(grad_out, key, value, incoming, template, weight, scale, need_key, need_value):
        return tuple(key.new_empty(s) for s in grad_shapes(key.shape, value.shape, template is not None, need_key,
                                                           need_value))


def template_update(key: torch.Tensor, value: torch.Tensor, template: torch.Tensor | None = None,
                    weight: torch.Tensor | None = None, *, scale: float | None = None,
                    backend: str | None = None) -> torch.Tensor:
    """TTVOS long-term template update (Eq. 2-3): key (B, Nt, P), value (B, Ct, P) -> (B, Nt, Ct).

        I = softmax(key @ value^T * scale, dim=-1)      (default scale 1 / sqrt(P))
        returns I when template is None (the initial template LT_0), else
        template / (1 + w) + I * w / (1 + w)  with w = weight[b] >= 0 (the adaptive weight).

    key, value: any float dtype, any strides (B = batch x objects, P = H x W positions).
    template (B, Nt, Ct) and weight (B,): both or neither, same dtype as key.
    Returns a contiguous (B, Nt, Ct) tensor of key's dtype, computed in float32 for float16 /
    bfloat16 inputs. Differentiable with respect to key, value, template and weight.
    backend: "cpu", "cuda", "triton", "reference" or "auto" (None: use_backend context, then
    $VOS_KERNELS_BACKEND, then auto).
    """
    validate(key, value, template, weight, scale)
    name = resolve_backend(OP, backend, key.device, IMPLEMENTED)
    if name == "reference":
        return template_update_reference(key, value, template, weight, scale=scale)
    if name in ("cpu", "cuda") and not _needs_autograd(key, value, template, weight):
        # Inference (the 80+ FPS loop): the C++ kernel directly, without the custom op's
        # autograd wrapper (~0.1 ms of Python per call). Not while compiling: there the custom
        # op keeps the default scale symbolic in P.
        return torch.ops.vos_kernels.template_update_forward(key, value, template, weight, _scale_of(scale, key))[0]
    return template_update_with_incoming_op(key, value, template, weight, scale, name)[0]


def _needs_autograd(*tensors) -> bool:
    """Whether the call must go through the custom op (autograd, or tracing by torch.compile)."""
    if torch.compiler.is_compiling():
        return True
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
