"""Load checkpoints of the public CRVOS implementation (CV-IP/CRVOS, ``CRVOS_best.tar``).

The public ``test.py`` saves and loads a plain ``state_dict`` of its ``CRVOS`` module:

    vos.backbone.<torchvision ResNet-50 names>      (conv1, bn1, layer1..4, fc)
    vos.refine.{conv,blend}_s{16,8,4}.conv.{weight,bias}   (ConvRelu: Conv2d inside a Sequential)
    vos.refine.{deconv1_1,deconv1_2,deconv2,deconv3,predictor}.{weight,bias}

Here the same tensors live at ``backbone.<name>`` and ``refine.<name>`` (no ``.conv`` level).
``vos.backbone.fc`` (the ImageNet classifier) is never used by CRVOS; it is required in the
input, so that a truncated file is still caught, and dropped (our trunk has no fc).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from vos_models.registry import build_method
from vos_models.registry import load_public_checkpoint as load_public

from .._convert_utils import PublicCheckpointError, check_public_state_dict, meta_model, state_shapes
from .method import CRVOS

_CONV_RELU = ("conv_s16", "blend_s16", "conv_s8", "blend_s8", "conv_s4", "blend_s4")
PAPER_CONFIG = dict(backbone="resnet50")

__all__ = ["PublicCheckpointError", "convert_public_checkpoint", "convert_public_state_dict",
           "export_public_state_dict", "load_public_checkpoint", "model_from_public_state_dict"]


def _fc_shapes(model: CRVOS) -> dict[str, tuple[int, ...]]:
    """The public trunk's unused ImageNet classifier (1000 classes on the layer4 channels)."""
    channels = model.backbone.feature_channels["layer4"]
    return {"vos.backbone.fc.weight": (1000, channels), "vos.backbone.fc.bias": (1000,)}


def _public_name(ours: str) -> str:
    """Our parameter name -> the public one."""
    head, _, rest = ours.partition(".")
    if head == "backbone":
        return "vos.backbone." + rest
    if head == "refine":
        module, _, leaf = rest.partition(".")
        return f"vos.refine.{module}.conv.{leaf}" if module in _CONV_RELU else f"vos.refine.{rest}"
    raise KeyError(f"unexpected parameter {ours!r} in the CRVOS model")


def _expected_public_shapes(config: dict) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """(public name -> shape, public name -> our name) for a model built with ``config``."""
    model = meta_model(lambda: build_method("crvos", **config))
    ours = state_shapes(model)
    shapes = {_public_name(name): shape for name, shape in ours.items()}
    shapes.update(_fc_shapes(model))
    return shapes, {_public_name(name): name for name in ours}


def convert_public_state_dict(state_dict: Mapping[str, torch.Tensor], **config) -> dict[str, torch.Tensor]:
    """Public CRVOS state dict -> state dict for ``CRVOS(**config)`` (default: the paper model).

    Strict: raises ``PublicCheckpointError`` (a ``ValueError``) naming every missing,
    unexpected or misshaped key.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"convert_public_state_dict: expected a state dict (mapping of names to "
                        f"tensors), got {type(state_dict).__name__}")
    config = {**PAPER_CONFIG, **config}
    shapes, rename = _expected_public_shapes(config)
    check_public_state_dict(state_dict, shapes, what="not a public CRVOS (CV-IP/CRVOS) state dict for backbone "
                                                     f"{config['backbone']!r}")
    return {rename[name]: state_dict[name] for name in shapes if name in rename}


def export_public_state_dict(model: CRVOS) -> dict[str, torch.Tensor]:
    """The inverse of ``convert_public_state_dict``: our weights under the public names.

    The unused ImageNet classifier ``vos.backbone.fc`` is filled with zeros, so the result of
    a ResNet-50 model loads into the public ``CRVOS`` module with ``strict=True``.
    """
    out = {_public_name(name): tensor for name, tensor in model.state_dict().items()}
    for public, shape in _fc_shapes(model).items():
        out[public] = torch.zeros(shape)
    return out


def _unwrap(checkpoint):
    """The state dict inside a loaded file: plain (public test.py) or under "net"/"state_dict"."""
    if isinstance(checkpoint, Mapping) and checkpoint.get("format") == "vos_models.checkpoint":
        raise PublicCheckpointError("this is a vos_models checkpoint, not a public CRVOS one: load it with "
                         "vos_models.load_method (vos-segment --checkpoint)")
    if isinstance(checkpoint, Mapping) and not any(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        for key in ("net", "state_dict"):
            if isinstance(checkpoint.get(key), Mapping):
                return checkpoint[key]
    return checkpoint


def model_from_public_state_dict(state_dict: Mapping[str, torch.Tensor], **config) -> CRVOS:
    """``CRVOS(**config)`` (default: the paper model) holding the converted public weights, in eval mode.

    The model is built on the meta device and takes the converted tensors as its parameters,
    so no time goes into a random initialisation that would be overwritten.
    """
    converted, config = convert_public_checkpoint(state_dict, **config)
    with torch.device("meta"):
        model = build_method("crvos", **config)
    model.load_state_dict(converted, strict=True, assign=True)
    return model.eval()


def convert_public_checkpoint(checkpoint, **config) -> tuple[dict[str, torch.Tensor], dict]:
    """The registered converter: a loaded public file (plain, or under "net" / "state_dict")
    -> (our state dict, build config: the paper model unless ``config`` says otherwise)."""
    config = {**PAPER_CONFIG, **config}
    return convert_public_state_dict(_unwrap(checkpoint), **config), config


def load_public_checkpoint(path, map_location="cpu", **config) -> CRVOS:
    """Build ``CRVOS(**config)`` (default: the paper model) from a public checkpoint file, in eval mode
    (:func:`vos_models.registry.load_public_checkpoint` with this method's converter)."""
    return load_public("crvos", path, map_location, **config)
