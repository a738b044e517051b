"""TTVOS: adaptive template matching with a transition-map loss (Park et al., IEEE Access 2021).

    from vos_models.methods.ttvos import TTVOS, load_public_checkpoint
    model = TTVOS(backbone="resnet18")               # or build_method("ttvos", ...)
    model = load_public_checkpoint("ttvos_resnet18.pth.tar")
"""
from .method import TTVOS, TTVOSVideoState
from .training import TRAINING_STAGES
from .convert import convert_public_state_dict, load_public_checkpoint

__all__ = ["TTVOS", "TTVOSVideoState", "TRAINING_STAGES", "convert_public_state_dict", "load_public_checkpoint"]

from vos_models.registry import register_method

register_method("ttvos", TTVOS)
