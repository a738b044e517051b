"""Inference side: the method contract, the session that drives a method over one video, and
the engine that runs it over videos."""
from .interface import VideoState, VOSMethod, grow_objects, merge_new_masks
from .session import VideoSession

__all__ = ["VOSMethod", "VideoState", "VideoSession", "grow_objects", "merge_new_masks"]
