"""vos_models: semi-supervised video object segmentation models built on vos_kernels.

Public entry points:

- :class:`VOSMethod`, :class:`VideoState`: the method contract (``vos_models.engine.interface``);
  :class:`VideoSession`: one video through a method, the engine's side of it.
- :class:`VOSInputError`: what a user gets wrong (``vos_models.errors``; the CLIs catch it).
- :func:`build_method`, :func:`register_method`, :func:`available_methods`,
  :func:`save_checkpoint`, :func:`load_checkpoint`, :func:`load_method`: the registry.
- ``vos_models.backbones``: torchvision-compatible ResNet-18/50.
- ``vos_models.data``, ``vos_models.metrics``, ``vos_models.engine``, ``vos_models.training``,
  ``vos_models.cli``: readers and synthetic clips, J&F, inference, training, command lines.
"""
from .engine.interface import VideoState, VOSMethod
from .engine.session import VideoSession
from .errors import CheckpointError, DataError, VOSInputError
from .registry import (available_methods, build_method, load_checkpoint, load_method, load_public_checkpoint,
                       register_method, save_checkpoint)
from .tracker import Tracker

__all__ = ["Tracker", "VOSMethod", "VideoState", "VideoSession", "build_method", "register_method",
           "available_methods", "save_checkpoint", "load_checkpoint", "load_method", "load_public_checkpoint", "VOSInputError",
           "DataError", "CheckpointError"]
