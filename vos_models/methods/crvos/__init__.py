"""CRVOS (Cho et al., ICIP 2020): Clue Refining Network for Video Object Segmentation.

``build_method("crvos", **config)`` or ``CRVOS(**config)``; public checkpoints load with
``vos_models.methods.crvos.convert.load_public_checkpoint``. See ``model.py``.
"""
from vos_models.registry import register_method

from .model import CRVOS

register_method("crvos", CRVOS)

__all__ = ["CRVOS"]
