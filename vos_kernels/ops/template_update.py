"""template_update (docs/ops.md §3): the declaration of the TTVOS template outer-product update.

    I   = softmax(key @ value^T * scale, dim=-1)        key (B, Nt, P), value (B, Ct, P)
    out = I                                             when template is None (LT_0)
        = template / (1 + w) + I * w / (1 + w)          otherwise, w = weight[b] >= 0

Registered by vos_kernels._registry as
  vos_kernels::template_update(key, value, template?, weight?, scale?, backend) -> out: the
      public op (validates, picks the backend, runs the eager reference or the fused op below);
  vos_kernels::template_update_with_incoming(key, value, template?, weight?, scale?, backend)
      -> (out, incoming): the fused op (cpu/cuda: C++ template_update_{forward,backward};
      triton: vos_kernels.triton.template_update), with its gradient op
      template_update_with_incoming_grad. The public op returns one tensor; autograd, fake
      tensors and torch.compile go through the fused op.
"""
from __future__ import annotations

import math

import torch

from .._checks import check_finite_non_negative, check_positive_float, check_same_device, check_same_dtype, check_tensor
from .._registry import Backward, FusedOp, Kernel, OpDefinition, define_op, register_cpp_fake
from ..reference.template_update import template_update_reference

OP = "template_update"


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
    if weight is not None:  # the blend template / (1 + w) + I w / (1 + w) needs 0 <= w < inf
        check_finite_non_negative(OP, "weight", weight.detach())
    if scale is not None:
        check_positive_float(OP, "scale", scale)


def _scale_of(scale: float | None, key: torch.Tensor) -> float:
    return default_scale(key.shape[-1]) if scale is None else float(scale)


def grad_shapes(key_shape, value_shape, has_template: bool, need_key: bool, need_value: bool):
    """Shapes of (grad_key, grad_value, grad_template, grad_weight); (0,) for those not computed."""
    out = output_shape(key_shape, value_shape)
    return (tuple(key_shape) if need_key else (0,), tuple(value_shape) if need_value else (0,),
            out if has_template else (0,), (key_shape[0],) if has_template else (0,))


def _forward_fake(key, value, template, weight, scale):
    return (key.new_empty(output_shape(key.shape, value.shape)),
            key.new_empty(incoming_shape(key.shape, value.shape, template is not None)))


def _backward_fake(grad_out, key, value, incoming, template, weight, scale, need_key, need_value):
    return tuple(key.new_empty(s) for s in grad_shapes(key.shape, value.shape, template is not None, need_key,
                                                       need_value))


def _forward(launch, key, value, template, weight, scale):
    # scale None means 1 / sqrt(P), resolved here on the concrete P (a float computed from a
    # symbolic P outside the op would make torch.compile guard on P's value).
    return launch(key, value, template, weight, _scale_of(scale, key))


def _backward(launch, grad_out, key, value, incoming, template, weight, scale, need_key, need_value):
    grad_key, grad_value, grad_template, grad_weight = launch(grad_out, key, value, incoming, template, weight,
                                                              _scale_of(scale, key), need_key, need_value)
    # One convention for every backend: what was not asked for is an empty (0,) tensor.
    empty = key.new_empty((0,))
    return (grad_key.contiguous() if need_key else empty, grad_value.contiguous() if need_value else empty,
            grad_template.contiguous(), grad_weight.contiguous())


def _backward_scores_fake(grad_out, incoming, template, weight, scale):
    ctype = torch.float32 if incoming.dtype in (torch.float16, torch.bfloat16) else incoming.dtype
    has_template = template is not None
    return (incoming.new_empty(incoming.shape, dtype=ctype),
            incoming.new_empty(incoming.shape if has_template else (0,)),
            incoming.new_empty((incoming.shape[0],) if has_template else (0,)))


register_cpp_fake("template_update_backward_scores", _backward_scores_fake)

_ARGUMENTS = "Tensor key, Tensor value, Tensor? template, Tensor? weight, float? scale"

# (out, incoming): incoming is I when a template is given (the backward needs it and cannot
# recover it from out when w = 0) and an empty (0,) tensor otherwise (out is I then).
WITH_INCOMING = FusedOp(
    "template_update_with_incoming", _ARGUMENTS, "(Tensor, Tensor)",
    forward=Kernel("template_update_forward", "template_update.template_update_forward_triton", fake=_forward_fake,
                   adapt=_forward),
    backward=Backward(
        Kernel("template_update_backward", "template_update.template_update_backward_triton", fake=_backward_fake,
               adapt=_backward),
        # I itself: the separate buffer with a template, the output without one.
        saved=lambda inputs, output: (inputs[0], inputs[1], output[1] if inputs[2] is not None else output[0],
                                      *inputs[2:]),
        grads_for=(0, 1, 2, 3), needs=(0, 1)),
    grad_arguments="Tensor grad_out, Tensor key, Tensor value, Tensor incoming, Tensor? template, Tensor? weight, "
                   "float? scale, bool need_key, bool need_value",
    grad_returns="(Tensor, Tensor, Tensor, Tensor)")


def _validated(key, value, template, weight, scale):
    validate(key, value, template, weight, scale)
    return key, value, template, weight, scale


TEMPLATE_UPDATE = define_op(OpDefinition(
    OP, "(Tensor key, Tensor value, Tensor? template=None, Tensor? weight=None, float? scale=None, "
        "str backend='auto') -> Tensor",
    validate=_validated,
    reference=lambda key, value, template, weight, scale: template_update_reference(key, value, template, weight,
                                                                                    scale=scale),
    fused=lambda *args: WITH_INCOMING(*args)[0]))


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
    return TEMPLATE_UPDATE(key, value, template, weight, scale, backend=backend)


# The backends this op implements, from its declaration (read by _dispatch.would_serve and make gpu-ready).
IMPLEMENTED = TEMPLATE_UPDATE.backends
