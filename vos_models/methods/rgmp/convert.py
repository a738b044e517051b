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

from vos_models.registry import build_method

from .method import RGMP

PUBLIC_PREFIX = "module."
DROPPED_PUBLIC_KEYS = tuple(f"Decoder.pred{i}.{p}" for i in (3, 4, 5) for p in ("weight", "bias"))

# (public pattern, our replacement), tried in order on the key without "module.".
_RENAMES = [
    (r"^Encoder\.(mean|std)$", r"encoder.\1"),
    (r"^Encoder\.conv1_p\.", "encoder.backbone.conv1_extra."),
    (r"^Encoder\.(conv1|bn1)\.", r"encoder.backbone.\1."),
    (r"^Encoder\.res2\.", "encoder.backbone.layer1."),
    (r"^Encoder\.res3\.", "encoder.backbone.layer2."),
    (r"^Encoder\.res4\.", "encoder.backbone.layer3."),
    (r"^Encoder\.res5\.", "encoder.backbone.layer4."),
    (r"^Decoder\.GC\.", "decoder.global_conv."),
    (r"^Decoder\.convG([12])\.", r"decoder.global_residual.conv\1."),
    (r"^Decoder\.RF([432])\.convFS1\.", r"decoder.refine\1.skip_conv."),
    (r"^Decoder\.RF([432])\.convFS2\.", r"decoder.refine\1.skip_residual.conv1."),
    (r"^Decoder\.RF([432])\.convFS3\.", r"decoder.refine\1.skip_residual.conv2."),
    (r"^Decoder\.RF([432])\.convMM1\.", r"decoder.refine\1.merge_residual.conv1."),
    (r"^Decoder\.RF([432])\.convMM2\.", r"decoder.refine\1.merge_residual.conv2."),
    (r"^Decoder\.pred2\.", "decoder.predict."),
]


# The inverse, for writing our weights in the public layout (``to_public_state_dict``).
_INVERSE_RENAMES = [
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


class PublicCheckpointError(ValueError):
    """A state dict that is not a public RGMP checkpoint (or not one this model can take)."""


def _rename(key: str, table) -> str | None:
    for pattern, replacement in table:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    return None


def _our_name(public_key: str) -> str | None:
    name = _rename(public_key, _RENAMES)
    return None if name is None else "network." + name


def _expected_shapes(**config) -> dict[str, tuple[int, ...]]:
    # Built on the meta device: shapes only, no memory, no initialisation cost.
    with torch.device("meta"):
        model = RGMP(**config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _listing(keys, limit: int = 6) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def convert_public_state_dict(state_dict: dict[str, Tensor], **config) -> dict[str, Tensor]:
    """Public RGMP state dict -> state dict of ``RGMP(**config)`` (default: the paper's model).

    Raises PublicCheckpointError naming every missing, unexpected or misshaped key.
    """
    if not isinstance(state_dict, dict):
        raise PublicCheckpointError(f"expected a state dict (dict of tensors), got {type(state_dict).__name__}")
    if state_dict.get("format") == "vos_models.checkpoint":
        raise PublicCheckpointError("this is a vos_models checkpoint, not a public RGMP one: load it with "
                                    "vos_models.load_method")
    stripped = {}
    for key, value in state_dict.items():
        if not isinstance(value, Tensor):
            raise PublicCheckpointError(f"entry {key!r} is a {type(value).__name__}, not a tensor: "
                                        "not a public RGMP state dict")
        stripped[key[len(PUBLIC_PREFIX):] if key.startswith(PUBLIC_PREFIX) else key] = value
    if not any(k.startswith(("Encoder.", "Decoder.")) for k in stripped):
        raise PublicCheckpointError("not a public RGMP state dict: no 'module.Encoder.*' or "
                                    f"'module.Decoder.*' keys (found {_listing(state_dict)})")
    expected = _expected_shapes(**config)
    converted, unexpected, misshaped = {}, [], []
    for key, value in stripped.items():
        if key in DROPPED_PUBLIC_KEYS:
            continue
        ours = _our_name(key)
        if ours is None or ours not in expected:
            unexpected.append(PUBLIC_PREFIX + key)
        elif tuple(value.shape) != expected[ours]:
            misshaped.append(f"{PUBLIC_PREFIX}{key} {tuple(value.shape)} (model expects {expected[ours]})")
        else:
            converted[ours] = value
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in converted:
            converted[key] = torch.zeros((), dtype=torch.long)
    missing = [k for k in expected if k not in converted]
    if missing or unexpected or misshaped:
        problems = []
        if missing:
            problems.append(f"missing (our names): {_listing(missing)}")
        if unexpected:
            problems.append(f"unexpected: {_listing(unexpected)}")
        if misshaped:
            problems.append(f"misshaped: {_listing(misshaped)}")
        raise PublicCheckpointError("the state dict does not fit RGMP"
                                    f"({', '.join(f'{k}={v!r}' for k, v in config.items())}): "
                                    + "; ".join(problems))
    return converted


def to_public_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our state dict -> the public layout (``module.`` keys), e.g. to run our weights in the
    public code. The public decoder's unused ``pred3..pred5`` have no counterpart here and are
    left out (load with ``strict=False`` there, or add them)."""
    out = {}
    for key, value in state_dict.items():
        name = _rename(key[len("network."):], _INVERSE_RENAMES) if key.startswith("network.") else None
        if name is None:
            raise PublicCheckpointError(f"to_public_state_dict: {key!r} has no public counterpart")
        out[PUBLIC_PREFIX + name] = value
    return out


def load_public_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", **config) -> RGMP:
    """Build ``RGMP(**config)`` and load a public checkpoint file (e.g. ``weights.pth``) strictly."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_public_checkpoint: no file at {path}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    model = build_method("rgmp", **config)
    model.load_state_dict(convert_public_state_dict(state, **config), strict=True)
    return model.eval()
