"""Public TTVOS checkpoints (HYOJINPARK/TTVOS) -> this package's TTVOS.

The public trainer saves ``{"epoch", "net": state_dict, "optimizer", ...}`` with the keys of
its ``VOS`` module (prefix ``vos.``): ``vos.backbone.*`` (torchvision ResNet names, or the
public MobileNetV3 stage slices ``layer0..layer4`` that keep torchvision's ``features`` indices,
or the public HRNet names ``conv1``, ``layer1``, ``transition1..3``, ``stage2..4``),
``vos.refine.*`` (REFINEV3), ``vos.gcm.*`` and ``vos.gcq.*``. Each public module maps onto one
module here (table below); the backbone (ResNet-18, ResNet-50, MobileNetV3-Large or -Small,
HRNetV2-W18-Small-v1) is read off the keys. HRNet trunk keys map one to one:
``vos.backbone.<rest>`` <-> ``trunk.hrnet.<rest>``.
Conversion is strict: a missing, unexpected or misshaped key raises a PublicCheckpointError
(a ValueError) naming it.
"""
from __future__ import annotations

from pathlib import Path

from torch import Tensor

from .._convert_utils import PublicCheckpointError, check_public_state_dict, meta_model, state_shapes
from .backbone import BACKBONES, MOBILENET_STAGES

#: Public MobileNetV3 stages that are one ``features`` entry, not a slice (their keys carry no
#: index): ``MobileNetV3Seg`` takes ``layer0 = features[0]`` and ``layer1 = features[1]`` for Small.
_UNSLICED_STAGES = {"large": (), "small": ("layer0", "layer1")}

__all__ = ["PublicCheckpointError", "convert_public_checkpoint", "convert_public_state_dict", "detect_backbone",
           "load_public_checkpoint"]

#: public key prefix -> our key prefix (longest public prefixes are matched first).
PUBLIC_TO_OURS = {
    "vos.backbone.": "trunk.resnet.",
    "vos.refine.conv_s16.conv.": "head.decoder.short_term.0.",
    "vos.refine.blend_s16.conv.": "head.decoder.blend_s16.0.",
    "vos.refine.conv_s8.conv.": "head.decoder.long_term.0.",
    "vos.refine.blend_s8.conv.": "head.decoder.blend_s8.0.",
    "vos.refine.cal_UpW.0.conv.": "head.decoder.adaptive_weight.0.0.",
    "vos.refine.cal_UpW.2.": "head.decoder.adaptive_weight.2.",
    "vos.refine.conv_s4.conv.": "head.decoder.skip_s4.0.",
    "vos.refine.blend_s4.conv.": "head.decoder.blend_s4.0.",
    "vos.refine.deconv1_1.": "head.decoder.up_s16.",
    "vos.refine.deconv1_2.": "head.decoder.up_s16_twice.",
    "vos.refine.deconv2.": "head.decoder.up_s8.",
    "vos.refine.deconv3.": "head.decoder.up_s4.",
    "vos.refine.predictor_Diff.": "head.decoder.transition.",
    "vos.refine.predictor_Tmp.": "head.decoder.template_mask.",
    "vos.gcm.conv_key.": "head.template_encoder.key.",
    "vos.gcm.conv_val.": "head.template_encoder.value.",
    "vos.gcq.conv_val.": "head.template_query.value.",
    "vos.gcq.conv_feat.": "head.template_query.feature.",
    "vos.gcq.blend.": "head.template_query.blend.",
}
_PREFIXES = sorted(PUBLIC_TO_OURS, key=len, reverse=True)


def _unwrap(state_dict: dict) -> dict:
    """The bare public state dict: unwrap {"net": ...} and a DataParallel "module." prefix."""
    if not isinstance(state_dict, dict):
        raise TypeError(f"convert_public_state_dict: expected a dict, got {type(state_dict).__name__}")
    for wrapper in ("net", "state_dict"):
        inner = state_dict.get(wrapper)
        if isinstance(inner, dict):
            state_dict = inner
            break
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    return state_dict


def detect_backbone(state_dict: dict) -> str:
    """The backbone name (a key of BACKBONES) the public keys show; a clear error otherwise."""
    keys = list(state_dict)
    # HRNet first: its layer1 is a Bottleneck, so it also has ResNet-50-like layer1 keys.
    if any(k.startswith(("vos.backbone.stage", "vos.backbone.transition")) for k in keys):
        # Small-v1: one module per stage, stage4 with 4 branches (Small-v2 has 3 / 2 modules in stage3 / 4).
        if ("vos.backbone.stage4.0.branches.3.0.conv1.weight" in state_dict
                and not any(k.startswith(("vos.backbone.stage3.1.", "vos.backbone.stage4.1.")) for k in keys)):
            return "hrnetv2_w18_small"
        raise PublicCheckpointError("convert_public_state_dict: an HRNet TTVOS checkpoint without the 4-branch "
                                    "stage4 of HRNetV2-W18-Small-v1 (hrnetv2Sv1); implemented backbones: "
                                    f"{sorted(BACKBONES)}")
    if "vos.backbone.layer1.0.conv3.weight" in state_dict:
        return "resnet50"
    if "vos.backbone.layer1.0.conv2.weight" in state_dict:
        return "resnet18"
    if "vos.backbone.layer0.1.block.0.0.weight" in state_dict:
        return "mobilenetv3_large"
    if "vos.backbone.layer1.block.0.0.weight" in state_dict:
        return "mobilenetv3_small"
    raise PublicCheckpointError("convert_public_state_dict: not a public TTVOS state dict (no 'vos.backbone.layer1.*' keys; "
                     f"first keys: {keys[:5]})")


_OURS_PREFIXES = sorted(PUBLIC_TO_OURS.values(), key=len, reverse=True)
_OURS_TO_PUBLIC = {ours: public for public, ours in PUBLIC_TO_OURS.items()}


def _public_name(ours: str) -> str:
    """Our key -> the public one (``vos.``...)."""
    prefix = next((p for p in _OURS_PREFIXES if ours.startswith(p)), None)
    if prefix is None:
        raise PublicCheckpointError(f"{ours!r} has no public TTVOS counterpart")
    return _OURS_TO_PUBLIC[prefix] + ours[len(prefix):]


def _our_name(public: str) -> str:
    prefix = next(p for p in _PREFIXES if public.startswith(p))
    return PUBLIC_TO_OURS[prefix] + public[len(prefix):]


def convert_public_state_dict(state_dict: dict, backbone: str | None = None) -> dict[str, Tensor]:
    """Public TTVOS state dict (or checkpoint dict) -> state dict of ``TTVOS(backbone=...)``.

    ``backbone`` defaults to the one the keys show. Raises PublicCheckpointError (a
    ValueError) naming every missing, unexpected or misshaped key (public names).
    """
    from .method import TTVOS  # local import: method imports the engine interface

    state_dict = _unwrap(state_dict)
    found = detect_backbone(state_dict)
    if backbone is not None and backbone != found:
        raise PublicCheckpointError(f"convert_public_state_dict: backbone={backbone!r} requested but the checkpoint "
                                    f"holds a {found} backbone")
    ours = state_shapes(meta_model(lambda: TTVOS(backbone=found)))
    trunk = _trunk_public_names(ours, found)  # ours -> public, trunks not in the prefix table
    expected = {trunk.get(name) or _public_name(name): shape for name, shape in ours.items()}
    check_public_state_dict(state_dict, expected,
                            what=f"convert_public_state_dict: not a public TTVOS {found} state dict")
    trunk_to_ours = {public: name for name, public in trunk.items()}
    return {trunk_to_ours.get(key) or _our_name(key): value for key, value in state_dict.items()}


def _trunk_public_names(ours: dict, backbone: str) -> dict[str, str]:
    """Our key -> public key for the trunk tensors of a MobileNetV3 or HRNet TTVOS ({} otherwise)."""
    if backbone.startswith("mobilenetv3"):
        return _mobilenet_public_names(ours, backbone)
    if backbone.startswith("hrnet"):
        return _hrnet_public_names(ours)
    return {}


def _hrnet_public_names(ours) -> dict[str, str]:
    """Our key -> public key for every trunk tensor of an HRNet TTVOS: ``trunk.hrnet.<rest>`` ->
    ``vos.backbone.<rest>`` (the public ``HighResolutionNet`` names are kept verbatim)."""
    prefix = "trunk.hrnet."
    return {key: "vos.backbone." + key[len(prefix):] for key in ours if key.startswith(prefix)}


def _mobilenet_public_names(ours: dict, backbone: str) -> dict[str, str]:
    """Our key -> public key for every trunk tensor of a MobileNetV3 TTVOS.

    Ours: ``trunk.mobilenet.features.<i>.<rest>``; public: ``vos.backbone.<stage>.<i>.<rest>``
    (a slice of ``features`` keeps the index) or ``vos.backbone.<stage>.<rest>`` (one entry).
    """
    prefix = "trunk.mobilenet.features."
    arch = backbone.split("_")[1]
    stage_of = {i: stage for stage, indices in MOBILENET_STAGES[arch].items() for i in indices}
    mapping = {}
    for key in ours:
        if not key.startswith(prefix):
            continue
        index, rest = key[len(prefix):].split(".", 1)
        stage = stage_of[int(index)]
        public = f"{stage}.{rest}" if stage in _UNSLICED_STAGES[arch] else f"{stage}.{index}.{rest}"
        mapping[key] = "vos.backbone." + public
    return mapping


def convert_public_checkpoint(checkpoint, **config) -> tuple[dict[str, Tensor], dict]:
    """The registered converter: a loaded public file -> (our state dict, build config with the
    backbone the file holds; a ``backbone`` in ``config`` must match it)."""
    state = convert_public_state_dict(checkpoint, config.pop("backbone", None))
    return state, {**config, "backbone": detect_backbone(_unwrap(checkpoint))}


def load_public_checkpoint(path: str | Path, map_location="cpu", **config):
    """A TTVOS in eval mode holding the weights of a public checkpoint file.

    ``config`` goes to the TTVOS constructor (the backbone comes from the file);
    :func:`vos_models.registry.load_public_checkpoint` with this method's converter.
    """
    from vos_models.registry import load_public_checkpoint as load_public

    return load_public("ttvos", path, map_location, **config)
