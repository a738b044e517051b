"""Convert a public PCVOS checkpoint (github.com/pkyong95/PCVOS, `saves/*.pth`) to our model.

Public state-dict key (445 keys)                       -> ours
    key_encoder.res2.*                                 -> network.key_encoder.layer1.*
    key_encoder.{conv1,bn1,layer2,layer3}.*            -> network.key_encoder.<same>
    value_encoder.{conv1,bn1,layer1,layer2,layer3}.*   -> network.value_encoder.trunk.<same>
    value_encoder.fuser.*, key_proj.*, key_comp.*, input_proj.*,
    refine_transformer.*, decoder.*                    -> network.<same>
    refine_transformer.*.attn.relative_position_index  -> dropped (see below)

`relative_position_index` is an integer constant of the public constructor, not a weight:
`vos_kernels.clip_window_attention` indexes the bias table by the (dt, dh, dw) offset itself,
so the model needs no index. Its shape is checked; its values are not used (weight
generators such as the parity fixture's `fill` store zeros there).

Strict: every expected key must be present with the expected shape and nothing else may be
left; otherwise `PublicCheckpointError` names the missing, unexpected and misshaped keys.
"""
from __future__ import annotations

import re
from pathlib import Path

from torch import Tensor

from .._convert_utils import PublicCheckpointError, check_public_state_dict, meta_model, state_shapes

__all__ = ["PublicCheckpointError", "convert_public_checkpoint", "convert_public_state_dict", "load_public_checkpoint"]

# (our prefix, public prefix) after "network."; every other key is the same on both sides.
_OURS_TO_PUBLIC = [
    (re.compile(r"^key_encoder\.layer1\."), "key_encoder.res2."),
    (re.compile(r"^value_encoder\.trunk\."), "value_encoder."),
]
_BIAS_TABLE = re.compile(r"^refine_transformer\.layers\.\d+\.blocks\.\d+\.attn\.relative_position_bias_table$")


def _public_name(ours: str) -> str:
    """Our key (``network.``...) -> the public one."""
    name = ours[len("network."):]
    for pattern, replacement in _OURS_TO_PUBLIC:
        name = pattern.sub(replacement, name)
    return name


def _strip_wrappers(state: dict) -> dict:
    for wrapper in ("state_dict", "model", "network"):
        if wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def convert_public_state_dict(state_dict: dict, **config) -> dict[str, Tensor]:
    """Public PCVOS state dict -> state dict of `PCVOS(**config)` (default: the paper model).

    Raises PublicCheckpointError naming missing / unexpected / misshaped keys (public names).
    """
    from .method import PCVOS

    if not isinstance(state_dict, dict):
        raise PublicCheckpointError(f"expected a state dict (dict of tensors), got {type(state_dict).__name__}")
    state = _strip_wrappers(state_dict)
    model = meta_model(lambda: PCVOS(**config))
    ours = state_shapes(model)
    public_to_ours = {_public_name(name): name for name in ours}
    expected = {public: ours[name] for public, name in public_to_ours.items()}
    # the public blocks also hold the (constant) relative_position_index of their bias table
    window = tuple(config.get("icr_window", (2, 7, 7)))
    tokens = window[0] * window[1] * window[2]
    for public in list(expected):
        if _BIAS_TABLE.match(public):
            expected[public.replace("relative_position_bias_table", "relative_position_index")] = (tokens, tokens)
    check_public_state_dict(state, expected, what="not a public PCVOS checkpoint for this configuration "
                                                  f"({config or 'paper defaults'})")
    dtypes = {k: v.dtype for k, v in model.state_dict().items() if isinstance(v, Tensor)}
    converted = {public_to_ours[k]: v.to(dtypes[public_to_ours[k]]) for k, v in state.items() if k in public_to_ours}
    converted["_extra_state"] = {"iteration": 0}  # our training counter; a public file has none
    return converted


def convert_public_checkpoint(checkpoint, **config) -> tuple[dict[str, Tensor], dict]:
    """The registered converter: a loaded public file -> (our state dict, build config)."""
    return convert_public_state_dict(checkpoint, **config), config


def load_public_checkpoint(path: str | Path, map_location="cpu", **config):
    """Build `PCVOS(**config)` and load a public checkpoint file into it (strict)
    (:func:`vos_models.registry.load_public_checkpoint` with this method's converter)."""
    from vos_models.registry import load_public_checkpoint as load_public

    return load_public("pcvos", path, map_location, **config)
