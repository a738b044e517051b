"""Training: the resumable, distributed training engine, its sampler, losses and validation."""
from .losses import label_iou, masks_to_labels, multi_object_cross_entropy
from .sampler import ResumableSampler
from .trainer import TrainConfig, Trainer, lr_factor
from .validation import davis_validation_videos, synthetic_validation_videos, validate

__all__ = ["Trainer", "TrainConfig", "lr_factor", "ResumableSampler", "multi_object_cross_entropy", "label_iou",
           "masks_to_labels", "validate", "synthetic_validation_videos", "davis_validation_videos"]
