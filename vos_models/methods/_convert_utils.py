"""The strict key check shared by the public-checkpoint converters (``methods/<m>/convert.py``).

Each converter states what a public state dict of the requested model must hold, in the
*public* names (``expected``: name -> shape), and :func:`check_public_state_dict` compares a
given state dict with it. Every problem is reported at once, in the public names the user can
look for in their file:

    <what>: 2 missing keys: a.weight, a.bias; 1 unexpected keys: b.weight;
    1 misshaped keys: c.weight (expected [64, 3, 7, 7], got [64, 4, 7, 7])

Only after the check passes does a converter rename the tensors to ours.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CheckpointError


class PublicCheckpointError(CheckpointError):
    """A state dict that is not a public checkpoint of the method, or not one that fits the
    requested configuration."""


def meta_model(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` on the meta device: shapes only, no memory, no initialisation cost."""
    with torch.device("meta"):
        return build()


def state_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """{name: shape} of the tensors of ``model.state_dict()`` (``_extra_state`` and other
    non-tensor entries left out)."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if isinstance(v, Tensor)}


def describe(value: Any) -> str:
    """``[64, 3, 7, 7]`` for a tensor, ``a str`` for anything else."""
    return str(list(value.shape)) if isinstance(value, Tensor) else f"a {type(value).__name__}"


def listing(names: list[str], limit: int = 8) -> str:
    """The first ``limit`` names, comma-separated, then how many more."""
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def check_public_state_dict(state: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], *, what: str,
                            optional: Iterable[str] = (), ignored: Iterable[str] = ()) -> None:
    """Raise :class:`PublicCheckpointError` unless ``state`` holds exactly the ``expected`` tensors.

    state: the given state dict, in public names. expected: public name -> shape; every name is
    required except those in ``optional`` (checked when present). ``ignored``: public names
    that may be present and are not used (neither unexpected nor checked). ``what`` starts the
    message (e.g. "not a public CRVOS state dict for backbone 'resnet50'").
    """
    optional, ignored = set(optional), set(ignored)
    missing = sorted(name for name in expected if name not in state and name not in optional)
    unexpected = sorted(name for name in state if name not in expected and name not in ignored)
    misshaped = sorted(
        f"{name} (expected {list(expected[name])}, got {describe(state[name])})"
        for name in state
        if name in expected and (not isinstance(state[name], Tensor) or tuple(state[name].shape) != expected[name]))
    problems = [f"{len(names)} {label} keys: {listing(names)}"
                for label, names in (("missing", missing), ("unexpected", unexpected), ("misshaped", misshaped))
                if names]
    if problems:
        raise PublicCheckpointError(f"{what}: " + "; ".join(problems))
