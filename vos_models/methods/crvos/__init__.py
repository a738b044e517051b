"""CRVOS (Cho et al., ICIP 2020): Clue Refining Network for Video Object Segmentation.

``build_method("crvos", **config)`` or ``CRVOS(**config)``; public checkpoints load with
``vos_models.methods.crvos.convert.load_public_checkpoint`` (or ``--public-checkpoint``).
Layout (as every method package): ``network.py`` the nn modules, ``method.py`` the VOSMethod and
its state, ``convert.py`` the public-checkpoint converter, ``training.py`` the training loss.
"""
from vos_models.registry import MethodOption, register_method

from .aggregate import AGGREGATIONS
from .convert import convert_public_checkpoint
from .method import CRVOS, CRVOSState
from .network import BACKBONES


def _layer_list(text: str):
    """'all' -> 'all'; 'layer3,layer4' -> ('layer3', 'layer4') (for --finetune-layers)."""
    return text if text == "all" else tuple(name.strip() for name in text.split(",") if name.strip())


register_method("crvos", CRVOS, public_converter=convert_public_checkpoint, options={
    "backbone": MethodOption(str, "ResNet trunk: resnet50 (paper) or resnet18 (lighter, not the paper)",
                             choices=list(BACKBONES)),
    "finetune_layers": MethodOption(_layer_list, "trunk layers that train: 'all' or a comma list "
                                                 "(paper: layer4)"),
    "s16_width": MethodOption(int, "decoder width after the 1/16 projection (paper 256)"),
    "width": MethodOption(int, "decoder width of the refine modules (paper 128)"),
    "aggregation": MethodOption(str, "object aggregation: public (CRVOS min-background odds) or "
                                     "soft_aggregate (RGMP Eq. 1 via vos_kernels)", choices=list(AGGREGATIONS)),
    "backbone_weights": MethodOption(str, "torchvision ResNet weight file (ImageNet) to start the trunk from "
                                          "(paper: ImageNet ResNet-50; not stored in checkpoints)", saved=False),
})

__all__ = ["CRVOS", "CRVOSState"]
