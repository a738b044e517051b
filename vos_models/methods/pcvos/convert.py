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

import torch
from torch import Tensor

_RENAMES = [
    (re.compile(r"^key_encoder\.res2\."), "key_encoder.layer1."),
    (re.compile(r"^value_encoder\.(conv1|bn1|layer1|layer2|layer3)\."), r"value_encoder.trunk.\1."),
]
_INDEX = re.compile(r"^refine_transformer\.layers\.\d+\.blocks\.\d+\.attn\.relative_position_index$")


class PublicCheckpointError(ValueError):
    """The state dict is not a public PCVOS checkpoint that fits the requested configuration."""


def _strip_wrappers(state: dict) -> dict:
    for wrapper in ("state_dict", "model", "network"):
        if wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def convert_public_state_dict(state_dict: dict, **config) -> dict[str, Tensor]:
    """Public PCVOS state dict -> state dict of `PCVOS(**config)` (default: the paper model).

    Raises PublicCheckpointError naming missing / unexpected / misshaped keys.
    """
    from .method import PCVOS

    if not isinstance(state_dict, dict):
        raise PublicCheckpointError(f"expected a state dict (dict of tensors), got {type(state_dict).__name__}")
    state = _strip_wrappers(state_dict)
    with torch.device("meta"):
        expected = PCVOS(**config).state_dict()
    window = tuple(config.get("icr_window", (2, 7, 7)))
    tokens = window[0] * window[1] * window[2]
    converted, unexpected, misshaped = {}, [], []
    for key, value in state.items():
        if not isinstance(value, Tensor):
            unexpected.append(f"{key} (not a tensor)")
            continue
        if _INDEX.match(key):
            if tuple(value.shape) != (tokens, tokens):
                misshaped.append(f"{key}: public {tuple(value.shape)}, expected {(tokens, tokens)}")
            continue
        ours = key
        for pattern, repl in _RENAMES:
            ours = pattern.sub(repl, ours)
        ours = "network." + ours
        if ours not in expected:
            unexpected.append(key)
        elif not isinstance(expected[ours], Tensor) or tuple(expected[ours].shape) != tuple(value.shape):
            misshaped.append(f"{key}: public {tuple(value.shape)}, expected {tuple(expected[ours].shape)}")
        else:
            converted[ours] = value.to(expected[ours].dtype)
    converted["_extra_state"] = {"iteration": 0}  # our training counter; a public file has none
    reported = {_ours_name(m.split(":")[0]) for m in misshaped}
    missing = [k for k in expected if k not in converted and k not in reported]
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_short(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_short(unexpected)})")
        if misshaped:
            parts.append(f"{len(misshaped)} misshaped ({_short(misshaped)})")
        raise PublicCheckpointError("not a public PCVOS checkpoint for this configuration "
                                    f"({config or 'paper defaults'}): " + "; ".join(parts))
    return converted


def _ours_name(public_key: str) -> str:
    for pattern, repl in _RENAMES:
        public_key = pattern.sub(repl, public_key)
    return "network." + public_key


def _short(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... (+{len(names) - limit} more)" if len(names) > limit else "")


def load_public_checkpoint(path: str | Path, map_location="cpu", **config):
    """Build `PCVOS(**config)` and load a public checkpoint file into it (strict)."""
    from .method import PCVOS

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"public PCVOS checkpoint not found: {path}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    model = PCVOS(**config)
    model.load_state_dict(convert_public_state_dict(state, **config), strict=True)
    return model.eval()
