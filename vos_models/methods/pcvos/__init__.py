"""PCVOS (Per-Clip Video Object Segmentation, Park et al., CVPR 2022), registered as "pcvos".

    from vos_models import build_method
    model = build_method("pcvos", clip_length=10, top_k=20, max_memory_frames=50)

Public checkpoints: `vos_models.methods.pcvos.convert.load_public_checkpoint(path, **config)`.
"""
from vos_models.registry import register_method

from .method import PCVOS
from .network import PCVOSNetwork

register_method("pcvos", PCVOS)

__all__ = ["PCVOS", "PCVOSNetwork"]
