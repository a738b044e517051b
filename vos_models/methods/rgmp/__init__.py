"""RGMP: Fast Video Object Segmentation by Reference-Guided Mask Propagation (Oh et al., CVPR 2018).

``build_method("rgmp", **config)`` or ``RGMP(**config)``; public checkpoints load with
:func:`vos_models.methods.rgmp.convert.load_public_checkpoint`. See :class:`RGMP` for the
options (backbone, scales, resizer, training stage).
"""
from vos_models.registry import MethodOption, register_method

from .convert import convert_public_checkpoint
from .method import PAPER_SCALES, RGMP, RGMPState, aggregate_with_background
from .network import BACKBONES, RGMPNetwork
from .resize import RESIZERS
from .training import STAGES


def parse_scales(text: str) -> tuple[float, ...]:
    """'0.5,0.75,1.0' -> (0.5, 0.75, 1.0); 'paper' -> the paper's scales."""
    if text.strip().lower() == "paper":
        return PAPER_SCALES
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as err:
        raise ValueError(f"rgmp: --scales takes comma-separated numbers or 'paper', got {text!r}") from err


register_method("rgmp", RGMP, public_converter=convert_public_checkpoint, options={
    "scales": MethodOption(parse_scales, "inference scales, comma-separated, averaged "
                           "(default 1.0; 'paper' = 0.5,0.75,1.0)"),
    "backbone": MethodOption(str, "encoder trunk (resnet50 = paper; resnet18 = light, non-paper)",
                             choices=list(BACKBONES)),
    "decoder_channels": MethodOption(int, "decoder width (256 = paper)"),
    "resizer": MethodOption(str, "multi-scale resizer (default: opencv on CPU, torch on GPU)",
                            choices=list(RESIZERS)),
    "train_stage": MethodOption(str, "training stage: pretrain (simulated pairs) or finetune "
                                "(recurrent, on clips)", choices=list(STAGES)),
    "backbone_weights": MethodOption(str, "torchvision ResNet weight file (ImageNet) to start the encoder "
                                          "trunk from (paper: ImageNet ResNet-50; not stored in checkpoints)",
                                     saved=False),
})

__all__ = ["RGMP", "RGMPState", "RGMPNetwork", "PAPER_SCALES", "aggregate_with_background"]
