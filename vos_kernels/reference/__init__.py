"""Eager PyTorch references of the ops: plain, obviously right, float64-capable.

They are the ground truth of every test and the eager baselines of the benchmarks.
float16/bfloat16 inputs are computed in float32 and returned in the input dtype.
"""
from .clip_window_attention import clip_window_attention_reference, relative_position_index
from .memory_read import memory_read_reference
from .min_background_aggregate import min_background_aggregate_reference
from .soft_aggregate import soft_aggregate_reference
from .template_update import template_update_reference

__all__ = ["clip_window_attention_reference", "memory_read_reference", "min_background_aggregate_reference",
           "relative_position_index",
           "soft_aggregate_reference", "template_update_reference"]
