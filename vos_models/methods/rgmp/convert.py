"""Load checkpoints of the public RGMP implementation (seoungwugoh/RGMP) into :class:`RGMP`.

The public ``weights.pth`` is the ``state_dict()`` of ``nn.DataParallel(RGMP())``: every key
starts with ``module.`` (a state dict of the bare model, without the prefix, is accepted too).
Names map as follows (``ours`` = ``network.``):

    module.Encoder.mean / std              -> encoder.mean / std   (normalisation buffers)
    module.Encoder.conv1_p.*               -> encoder.backbone.conv1_extra.*   (mask stem)
    module.Encoder.conv1 / bn1             -> encoder.backbone.conv1 / bn1
    module.Encoder.res2 .. res5.*          -> encoder.backbone.layer1 .. layer4.*
    module.Decoder.GC.*                    -> decoder.global_conv.*
    module.Decoder.convG1 / convG2         -> decoder.global_residual.conv1 / conv2
    module.Decoder.RF{4,3,2}.convFS1       -> decoder.refine{4,3,2}.skip_conv
    module.Decoder.RF{4,3,2}.convFS2 / 3   -> decoder.refine{4,3,2}.skip_residual.conv1 / conv2
    module.Decoder.RF{4,3,2}.convMM1 / 2   -> decoder.refine{4,3,2}.merge_residual.conv1 / conv2
    module.Decoder.pred2                   -> decoder.predict
    module.Decoder.pred3 / pred4 / pred5   -> dropped: the public decoder computes them, but
                                              nothing uses their output

Batch-norm ``num_batches_tracked`` counters are absent from PyTorch-0.3-era files; they are
supplied as zeros (they play no part with frozen statistics). Everything else is strict: a
missing, unexpected or misshaped key raises :class:`PublicCheckpointError` naming it.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from vos_models.registry import load_public_checkpoint as load_public

from .._convert_utils import PublicCheckpointError, check_public_state_dict, listing, meta_model, state_shapes
from .method import RGMP

__all__ = ["PublicCheckpointError", "convert_public_checkpoint", "convert_public_state_dict", "to_public_state_dict", "load_public_checkpoint"]

PUBLIC_PREFIX = "module."
DROPPED_PUBLIC_KEYS = tuple(f"Decoder.pred{i}.{p}" for i in (3, 4, 5) for p in ("weight", "bias"))

# (our pattern, public replacement), tried in order on our key without "network.". The
# converter derives the expected public keys from the model through this one table.
_OURS_TO_PUBLIC = [
    (r"^encoder\.(mean|std)$", r"Encoder.\1"),
    (r"^encoder\.backbone\.conv1_extra\.", "Encoder.conv1_p."),
    (r"^encoder\.backbone\.(conv1|bn1)\.", r"Encoder.\1."),
    (r"^encoder\.backbone\.layer1\.", "Encoder.res2."),
    (r"^encoder\.backbone\.layer2\.", "Encoder.res3."),
    (r"^encoder\.backbone\.layer3\.", "Encoder.res4."),
    (r"^encoder\.backbone\.layer4\.", "Encoder.res5."),
    (r"^decoder\.global_conv\.", "Decoder.GC."),
    (r"^decoder\.global_residual\.conv([12])\.", r"Decoder.convG\1."),
    (r"^decoder\.refine([432])\.skip_conv\.", r"Decoder.RF\1.convFS1."),
    (r"^decoder\.refine([432])\.skip_residual\.conv1\.", r"Decoder.RF\1.convFS2."),
    (r"^decoder\.refine([432])\.skip_residual\.conv2\.", r"Decoder.RF\1.convFS3."),
    (r"^decoder\.refine([432])\.merge_residual\.conv1\.", r"Decoder.RF\1.convMM1."),
    (r"^decoder\.refine([432])\.merge_residual\.conv2\.", r"Decoder.RF\1.convMM2."),
    (r"^decoder\.predict\.", "Decoder.pred2."),
]


def _rename(key: str, table) -> str | None:
    for pattern, replacement in table:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    return None


def _public_name(ours: str) -> str:
    """Our key (``network.``...) -> the public one (``module.``...)."""
    name = _rename(ours[len("network."):], _OURS_TO_PUBLIC) if ours.startswith("network.") else None
    if name is None:
        raise PublicCheckpointError(f"{ours!r} has no public RGMP counterpart")
    return PUBLIC_PREFIX + name


def convert_public_state_dict(state_dict: dict[str, Tensor], **config) -> dict[str, Tensor]:
    """Public RGMP state dict -> state dict of ``RGMP(**config)`` (default: the paper's model).

    Raises PublicCheckpointError naming every missing, unexpected or misshaped key (public names).
    """
    if not isinstance(state_dict, dict):
        raise PublicCheckpointError(f"expected a state dict (dict of tensors), got {type(state_dict).__name__}")
    if state_dict.get("format") == "vos_models.checkpoint":
        raise PublicCheckpointError("this is a vos_models checkpoint, not a public RGMP one: load it with "
                                    "vos_models.load_method")
    given = {}
    for key, value in state_dict.items():
        if not isinstance(value, Tensor):
            raise PublicCheckpointError(f"entry {key!r} is a {type(value).__name__}, not a tensor: "
                                        "not a public RGMP state dict")
        given[key if key.startswith(PUBLIC_PREFIX) else PUBLIC_PREFIX + key] = value
    if not any(k.startswith((PUBLIC_PREFIX + "Encoder.", PUBLIC_PREFIX + "Decoder.")) for k in given):
        raise PublicCheckpointError("not a public RGMP state dict: no 'module.Encoder.*' or "
                                    f"'module.Decoder.*' keys (found {listing(sorted(state_dict))})")
    ours = state_shapes(meta_model(lambda: RGMP(**config)))
    public_to_ours = {_public_name(name): name for name in ours}
    expected = {public: ours[name] for public, name in public_to_ours.items()}
    counters = {public for public, name in public_to_ours.items() if name.endswith("num_batches_tracked")}
    check_public_state_dict(given, expected, optional=counters,
                            ignored=[PUBLIC_PREFIX + key for key in DROPPED_PUBLIC_KEYS],
                            what="the state dict does not fit RGMP"
                                 f"({', '.join(f'{k}={v!r}' for k, v in config.items())})")
    converted = {public_to_ours[key]: value for key, value in given.items() if key in public_to_ours}
    for public in counters - set(given):
        converted[public_to_ours[public]] = torch.zeros((), dtype=torch.long)
    return converted


def to_public_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our state dict -> the public layout (``module.`` keys), e.g. to run our weights in the
    public code. The public decoder's unused ``pred3..pred5`` have no counterpart here and are
    left out (load with ``strict=False`` there, or add them)."""
    out = {}
    for key, value in state_dict.items():
        out[_public_name(key)] = value
    return out


def convert_public_checkpoint(checkpoint, **config) -> tuple[dict[str, Tensor], dict]:
    """The registered converter: a loaded public file -> (our state dict, build config)."""
    return convert_public_state_dict(checkpoint, **config), config


def load_public_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", **config) -> RGMP:
    """Build ``RGMP(**config)`` and load a public checkpoint file (e.g. ``weights.pth``) strictly
    (:func:`vos_models.registry.load_public_checkpoint` with this method's converter)."""
    return load_public("rgmp", path, map_location, **config)
