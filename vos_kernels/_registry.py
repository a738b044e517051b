"""The one place where vos_kernels meets torch.library: each op is declared once, registered here.

An op has two layers, both built from declarations by this module:

* the **public op** `torch.ops.vos_kernels.<name>(..., backend="auto")` (`define_op`): a
  CompositeImplicitAutograd entry that validates the arguments once, resolves the backend once
  (`_dispatch.resolve_backend`) and then either runs the eager reference (plain autograd, the
  first-class "reference" backend) or calls the op's fused kernel op(s). The Python function
  `vos_kernels.<name>` calls the same entry without the dispatcher round trip.
* one or more **fused kernel ops** `torch.ops.vos_kernels.<kernel op>(..., backend)`
  (`FusedOp`): differentiable ops with a fake kernel and an autograd formula that calls the
  gradient op `<kernel op>_grad`. They run a `Kernel` on the cpu, cuda or triton backend: the
  C++ op `torch.ops.vos_kernels.<cpp>` (cpu and cuda; its schema is in csrc/<op>.cpp) or the
  Triton launcher `vos_kernels.triton.<module>.<function>`, which share one signature.

Registration uses the low-level `torch.library.Library` API, not `torch.library.custom_op`,
because custom_op's kernels import torch._dynamo (about 1 s) on the first call of any op; here
torch._dynamo is imported only when torch.compile is used.

Adding an op: C++/Triton kernels with one signature, one `Kernel` per computation, one
`FusedOp`, one `define_op`, and one test class (tests/op_tester.py). See docs/ops.md.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Sequence

import torch

from . import _library
from ._dispatch import resolve_backend

NAMESPACE = "vos_kernels"
FUSED_BACKENDS = ("cpu", "cuda", "triton")
LIBRARY = torch.library.Library(NAMESPACE, "FRAGMENT")


def first_tensor(args: Sequence[Any]) -> torch.Tensor:
    """The tensor that decides an op's device: its first tensor argument."""
    return next(a for a in args if isinstance(a, torch.Tensor))


def _with_defaults(name: str) -> Callable:
    """A wrapper that hands a Python kernel of vos_kernels::<name> every argument in schema order:
    the dispatcher drops arguments equal to their defaults and passes keyword-only ones by name."""
    arguments = getattr(torch.ops.vos_kernels, name).default._schema.arguments

    def wrap(kernel: Callable) -> Callable:
        def full(*args, **kwargs):
            return kernel(*args, *(kwargs.get(a.name, a.default_value) for a in arguments[len(args):]))
        return full
    return wrap


def _needs_autograd(args: Sequence[Any]) -> bool:
    """Whether a call must go through the dispatcher: autograd will record it, or torch.compile traces it."""
    if torch.compiler.is_compiling():
        return True
    return torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)


def register_cpp_fake(cpp: str, fake: Callable) -> None:
    """Fake kernel of the C++ op torch.ops.vos_kernels.<cpp>, when the loaded extension has it."""
    if cpp_op_present(cpp):
        torch.library.register_fake(f"{NAMESPACE}::{cpp}", fake, lib=LIBRARY)


def cpp_op_present(cpp: str) -> bool:
    """Whether the loaded extension defines torch.ops.vos_kernels.<cpp> (an extension built
    before an op was added loads fine but lacks that op's kernels)."""
    return _library.EXTENSION_LOADED and hasattr(torch.ops.vos_kernels, cpp)


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One computation on every fused backend, behind one signature.

    cpp: the C++ op torch.ops.vos_kernels.<cpp> (serves "cpu" and "cuda"), or a Python function
        with the same signature (an op without C++ kernels, e.g. the toy op of the tests).
    triton: "<module>.<function>", a launcher in vos_kernels.triton (imported on first use), or
        the launcher itself; None when the op has no Triton kernel.
    fake: the fake kernel of that signature (also registered for the C++ op).
    adapt: optional `adapt(launch, *args)` that reshapes around the launch (e.g. flattens the
        spatial dims for kernels that take 3-D tensors); default `launch(*args)`.
    """
    cpp: str | Callable
    triton: str | Callable | None
    fake: Callable
    adapt: Callable | None = None
    _launchers: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        if isinstance(self.cpp, str):
            register_cpp_fake(self.cpp, self.fake)

    def launcher(self, backend: str) -> Callable:
        """The function that runs this kernel on `backend` (looked up once per backend)."""
        found = self._launchers.get(backend)
        if found is None:
            found = self._launchers[backend] = self._find_launcher(backend)
        return found

    def _find_launcher(self, backend: str) -> Callable:
        chosen = self.triton if backend == "triton" else self.cpp
        if callable(chosen):
            return chosen
        if backend == "triton":
            module, function = self.triton.rsplit(".", 1)
            return getattr(importlib.import_module(f"vos_kernels.triton.{module}"), function)
        if not cpp_op_present(self.cpp):
            raise RuntimeError(f"{self.cpp}: the loaded vos_kernels._C was built without this C++ kernel "
                               "(built before the op was added); rebuild it (python setup.py build_ext --inplace)")
        return getattr(torch.ops.vos_kernels, self.cpp).default

    def run(self, backend: str, *args):
        launch = self.launcher(backend)
        return launch(*args) if self.adapt is None else self.adapt(launch, *args)


@dataclasses.dataclass(frozen=True)
class Backward:
    """How a FusedOp differentiates.

    kernel: the gradient Kernel; its arguments are the output gradients, then `saved(...)`, then
        the requires-grad flags of the inputs listed in `needs`.
    saved: (inputs, outputs) -> the gradient kernel's arguments after the output gradients
        (tensors are kept with ctx.save_for_backward, the rest on ctx).
    grads_for: the forward inputs (by position) that the gradient kernel's outputs belong to.
    differentiable_outputs: how many leading outputs carry gradients; later ones (indices,
        softmax statistics) are marked non-differentiable.
    needs: inputs whose ctx.needs_input_grad flags the gradient kernel takes (to skip work).
    """
    kernel: Kernel
    saved: Callable[[tuple, Any], tuple]
    grads_for: tuple[int, ...]
    differentiable_outputs: int = 1
    needs: tuple[int, ...] = ()


class FusedOp:
    """A differentiable op `vos_kernels::<name>(<arguments>, str backend)` that runs `forward`
    on a fused backend, and its gradient op `vos_kernels::<name>_grad`.

    arguments/returns: schema text without the backend, e.g. "Tensor prob, float eps" and "Tensor".
    grad_arguments/grad_returns: the same for the gradient op.
    Called from Python (`op(*args, backend)`, backend concrete), it skips the dispatcher when
    neither autograd nor torch.compile needs it (inference loops).
    """

    def __init__(self, name: str, arguments: str, returns: str, forward: Kernel, backward: Backward,
                 backends: Sequence[str] = FUSED_BACKENDS, grad_arguments: str = "", grad_returns: str = ""):
        self.name, self.forward, self.backward, self.backends = name, forward, backward, tuple(backends)
        self.op = self._define(name, arguments, returns, forward)
        self.grad_op = self._define(f"{name}_grad", grad_arguments, grad_returns, backward.kernel)
        self._inputs = len(self.op._schema.arguments)
        torch.library.register_autograd(f"{NAMESPACE}::{name}", self._backward, setup_context=self._setup_context,
                                        lib=LIBRARY)

    def _define(self, name: str, arguments: str, returns: str, kernel: Kernel):
        LIBRARY.define(f"{name}({arguments}, str backend='auto') -> {returns}")
        with_defaults = _with_defaults(name)

        @with_defaults
        def impl(*args):
            *args, backend = args
            return kernel.run(self.concrete(backend, args), *args)

        LIBRARY.impl(name, impl, "CompositeExplicitAutograd")
        torch.library.register_fake(f"{NAMESPACE}::{name}", with_defaults(lambda *args: kernel.fake(*args[:-1])),
                                    lib=LIBRARY)
        return getattr(torch.ops.vos_kernels, name).default

    def concrete(self, backend: str, args: Sequence[Any]) -> str:
        name = resolve_backend(self.name, None if backend == "auto" else backend, first_tensor(args).device,
                               self.backends + ("reference",))
        if name == "reference":
            raise ValueError(f"{self.name}: this fused op runs the {'/'.join(self.backends)} backends; for the eager "
                             "reference call the public op with backend='reference'")
        return name

    def __call__(self, *args):
        *args, backend = args
        if _needs_autograd(args):
            return self.op(*args, backend)
        return self.forward.run(backend, *args)

    def _setup_context(self, ctx, inputs, output):
        outputs = output if isinstance(output, tuple) else (output,)
        ctx.mark_non_differentiable(*outputs[self.backward.differentiable_outputs:])
        saved = self.backward.saved(inputs[:-1], output)
        ctx.is_tensor = [isinstance(v, torch.Tensor) for v in saved]
        ctx.save_for_backward(*(v for v in saved if isinstance(v, torch.Tensor)))
        ctx.others = [v for v in saved if not isinstance(v, torch.Tensor)]
        ctx.backend = inputs[-1]

    def _backward(self, ctx, *grad_outputs):
        tensors, others = iter(ctx.saved_tensors), iter(ctx.others)
        saved = [next(tensors) if is_tensor else next(others) for is_tensor in ctx.is_tensor]
        dtype = ctx.saved_tensors[0].dtype  # the kernels take gradients in the inputs' dtype
        grads_out = [g.to(dtype) for g in grad_outputs[:self.backward.differentiable_outputs]]
        needs = [ctx.needs_input_grad[i] for i in self.backward.needs]
        grads = self.grad_op(*grads_out, *saved, *needs, ctx.backend)
        grads = grads if isinstance(grads, tuple) else (grads,)
        result = [None] * self._inputs
        for index, grad in zip(self.backward.grads_for, grads):
            result[index] = grad if ctx.needs_input_grad[index] else None
        return tuple(result)


@dataclasses.dataclass(frozen=True)
class OpDefinition:
    """The public op `vos_kernels::<name>`: one declaration.

    schema: its arguments and returns with the backend last, e.g.
        "(Tensor prob, float eps=1e-07, str backend='auto') -> Tensor".
    validate: (*args) -> args, raising TypeError/ValueError that name the argument; it may
        normalise (int triples, ...). The only validation of a call.
    reference: (*args) -> output, the eager reference (differentiable by plain autograd).
    fused: (*args, backend) -> output on a concrete fused backend (calls FusedOp(s)).
    backends: every backend the op implements, "reference" included.
    preference: optional (*args) -> {device type: backend order} for "auto", when the best
        backend depends on the sizes (None or {} keeps the default order).
    """
    name: str
    schema: str
    validate: Callable
    reference: Callable
    fused: Callable
    backends: tuple[str, ...] = FUSED_BACKENDS + ("reference",)
    preference: Callable | None = None

    def __call__(self, *args, backend: str | None = None):
        args = self.validate(*args)
        order = self.preference(*args) if self.preference is not None else None
        name = resolve_backend(self.name, backend, first_tensor(args).device, self.backends, order)
        if name == "reference":
            return self.reference(*args)
        return self.fused(*args, name)


def define_op(definition: OpDefinition) -> OpDefinition:
    """Register `definition` as torch.ops.vos_kernels.<name> and return it (callable as the op)."""
    LIBRARY.define(f"{definition.name}{definition.schema}")

    @_with_defaults(definition.name)
    def entry(*args):
        *args, backend = args
        return definition(*args, backend=None if backend == "auto" else backend)

    LIBRARY.impl(definition.name, entry, "CompositeImplicitAutograd")
    return definition
