"""vos_kernels: fused kernels for video object segmentation.

Public API (contracts in the README and in each function's docstring):
    soft_aggregate, min_background_aggregate, memory_read, template_update, clip_window_attention,
    available_backends, use_backend
Each op is also registered as torch.ops.vos_kernels.<name>.
"""
from ._dispatch import use_backend
from ._library import available_backends
from .ops.clip_window_attention import clip_window_attention
from .ops.memory_read import memory_read
from .ops.min_background_aggregate import min_background_aggregate
from .ops.soft_aggregate import soft_aggregate
from .ops.template_update import template_update

__version__ = "0.1.0"
__all__ = ["available_backends", "clip_window_attention", "memory_read", "min_background_aggregate", "soft_aggregate",
           "template_update", "use_backend"]
