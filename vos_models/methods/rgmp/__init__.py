"""RGMP: Fast Video Object Segmentation by Reference-Guided Mask Propagation (Oh et al., CVPR 2018).

``build_method("rgmp", **config)`` or ``RGMP(**config)``; public checkpoints load with
:func:`vos_models.methods.rgmp.convert.load_public_checkpoint`. See :class:`RGMP` for the
options (backbone, scales, resizer, training stage).
"""
from vos_models.registry import register_method

from .method import PAPER_SCALES, RGMP, RGMPState, aggregate_with_background
from .network import RGMPNetwork

register_method("rgmp", RGMP)

__all__ = ["RGMP", "RGMPState", "RGMPNetwork", "PAPER_SCALES", "aggregate_with_background"]
