"""TTVOS: adaptive template matching with a transition-map loss (Park et al., IEEE Access 2021).

    from vos_models.methods.ttvos import TTVOS, load_public_checkpoint
    model = TTVOS(backbone="resnet18")               # or build_method("ttvos", ...)
    model = load_public_checkpoint("ttvos_resnet18.pth.tar")
"""
from .method import TTVOS, TTVOSVideoState
from .training import TRAINING_STAGES
from .convert import convert_public_checkpoint, convert_public_state_dict, load_public_checkpoint

__all__ = ["TTVOS", "TTVOSVideoState", "TRAINING_STAGES", "convert_public_state_dict", "load_public_checkpoint"]

from vos_models.registry import MethodOption, register_method


def _parse_bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {text!r}")  # argparse reports it as a bad flag value


register_method("ttvos", TTVOS, public_converter=convert_public_checkpoint, options={
    "backbone": MethodOption(str, "trunk: resnet18 (public resnet18s16, default), resnet50 (resnet50s16), "
                             "mobilenetv3_large / mobilenetv3_small (mobileNetV3Larges16 / Smalls16), "
                             "hrnetv2_w18_small (hrnetv2Sv1, the paper's main backbone)",
                             choices=["resnet18", "resnet50", "mobilenetv3_large", "mobilenetv3_small",
                                      "hrnetv2_w18_small"]),
    "train_backbone": MethodOption(str, "backbone parameters that train: last stage (paper), all, none",
                                   choices=["last", "all", "none"]),
    "frozen_bn": MethodOption(_parse_bool, "freeze the backbone batch norms (default true)"),
    "transition_loss_weight": MethodOption(float, "weight of the transition-map loss (Eq. 5-6, default 1)"),
    "template_mask_loss_weight": MethodOption(float, "weight of the public code's template-mask BCE (default 0)"),
    "backbone_weights": MethodOption(str, "torchvision ResNet / MobileNetV3 or HRNet weight file to start "
                                          "the trunk from (not stored in checkpoints)", saved=False),
})
