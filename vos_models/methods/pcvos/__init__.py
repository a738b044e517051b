"""PCVOS (Per-Clip Video Object Segmentation, Park et al., CVPR 2022), registered as "pcvos".

    from vos_models import build_method
    model = build_method("pcvos", clip_length=10, top_k=20, max_memory_frames=50)

Command lines: `vos-segment --method pcvos --clip-length 10 --top-k 20 --max-memory-frames 50`
(any other config key with `--set key=value`, e.g. `--set top_k=none` for a dense read).
Public checkpoints: `vos_models.methods.pcvos.convert.load_public_checkpoint(path, **config)`
(`--public-checkpoint` on the command lines).
"""
from vos_models.registry import MethodOption, register_method

from .convert import convert_public_checkpoint
from .method import PCVOS, PCVOSState
from .network import PCVOSNetwork

register_method("pcvos", PCVOS, public_converter=convert_public_checkpoint, options={
    "clip_length": MethodOption(int, "frames per clip L (paper: 5, 10, 15, 25); default 5"),
    "top_k": MethodOption(int, "memory read keeps the top-k entries per query; default 20"),
    "max_memory_frames": MethodOption(int, "cap on permanent memory frames (annotated frames are kept, "
                                           "the oldest other frame is dropped); default 50"),
    "mem_every": MethodOption(int, "memory write interval in frames (public rule); default: the last frame of every clip"),
    "pmm_interval": MethodOption(int, "progressive memory matching segment F; 0 disables; default 5"),
    "key_backbone": MethodOption(str, "key encoder trunk (paper: resnet50)", choices=["resnet50", "resnet18"]),
})

__all__ = ["PCVOS", "PCVOSNetwork", "PCVOSState"]
