"""Reading weight files safely (every checkpoint and weight path of the package), and strict
loading of a trunk's pretrained weight file, shared by the backbone loaders."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import CheckpointError, InputNotFoundError


def read_weights_file(path: str | Path, what: str, map_location: str | torch.device = "cpu"):
    """``torch.load(path, weights_only=True)`` with errors that name the file and say what is
    wrong: InputNotFoundError when it is absent, CheckpointError when it cannot be read. Only
    tensors and plain containers are loaded (never arbitrary pickled code), and the message
    never suggests otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"cannot read {what} {path}: not a file of tensors written by torch.save (corrupt, "
                              "or holding Python objects other than tensors, which are not loaded for safety)") from exc
    except Exception as exc:  # torch.load's errors on a damaged file vary (RuntimeError, EOFError, IndexError, ...)
        raise CheckpointError(f"cannot read {what} {path}: the file is truncated or corrupt "
                              f"({type(exc).__name__}); write or download it again") from exc


def load_trunk_file(model: nn.Module, path: str | Path, *, loader: str, kind: str,
                    drop: Callable[[str], bool], map_location: str | torch.device = "cpu") -> list[str]:
    """Load the state dict in ``path`` into ``model`` strictly; return the keys dropped by ``drop``.

    ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers are unwrapped. Every key left must
    match ``model`` in name and shape: a CheckpointError (``"<loader>: <path> is not <kind> ..."``)
    names the first missing, unexpected and misshaped keys.
    """
    path = Path(path)
    state = read_weights_file(path, f"{loader}: weight file", map_location)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise CheckpointError(f"{loader}: {path} does not hold a state dict")
    dropped = [k for k in state if drop(k)]
    state = {k: v for k, v in state.items() if k not in dropped}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshaped = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if missing or unexpected or misshaped:
        raise CheckpointError(f"{loader}: {path} is not {kind} for this model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, misshaped {misshaped[:5]}")
    model.load_state_dict(state, strict=True)
    return dropped
