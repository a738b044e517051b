"""Data: frame sources (image folders, video files), the DAVIS / YouTube-VOS layout, palette
masks, synthetic clips, training datasets and clip-consistent augmentation."""
from .augment import AugmentedClipDataset, ClipAugmentation
from .davis import DavisLayout, read_mask_folder
from .errors import DataError
from .frames import FrameSource, ImageFolderSource, VideoFileSource, VideoWriter, open_frames, read_image
from .palette import DAVIS_PALETTE, VOID_LABEL, mask_to_image, overlay, read_mask, write_mask

__all__ = ["ClipAugmentation", "AugmentedClipDataset", "DataError", "DavisLayout", "read_mask_folder",
           "FrameSource", "ImageFolderSource", "VideoFileSource", "VideoWriter", "open_frames", "read_image", "DAVIS_PALETTE", "VOID_LABEL",
           "read_mask", "write_mask", "mask_to_image", "overlay"]
