"""Inference side: the method interface and the engine that runs a method over a video."""
from .interface import VideoState, VOSMethod, grow_objects, merge_new_masks

__all__ = ["VOSMethod", "VideoState", "grow_objects", "merge_new_masks"]
