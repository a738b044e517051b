"""Backbones shared by the methods (torchvision-compatible ResNets, frozen batch norm)."""
from .frozen_bn import FrozenBatchNorm2d, freeze_batch_norms
from .resnet import (IMAGENET_MEAN, IMAGENET_STD, BasicBlock, Bottleneck, ResNet, load_backbone_weights,
                     normalize_imagenet, resnet18, resnet50)

__all__ = ["FrozenBatchNorm2d", "freeze_batch_norms", "ResNet", "BasicBlock", "Bottleneck", "resnet18",
           "resnet50", "load_backbone_weights", "normalize_imagenet", "IMAGENET_MEAN", "IMAGENET_STD"]
