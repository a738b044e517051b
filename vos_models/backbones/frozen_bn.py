"""FrozenBatchNorm2d: batch norm with fixed statistics and affine parameters.

y = (x - running_mean) / sqrt(running_var + eps) * weight + bias, per channel, with all four
tensors stored as buffers (never trained, never updated). VOS methods train with batches of one
or two clips, far too small for batch statistics, so the backbones freeze their norms.

The state-dict keys are exactly BatchNorm2d's (weight, bias, running_mean, running_var,
num_batches_tracked), so a checkpoint moves between a BatchNorm2d model and a
FrozenBatchNorm2d model in either direction with ``strict=True``. A state dict without
``num_batches_tracked`` (older torchvision files) also loads: the counter is left at zero.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with frozen statistics. Input and output (N, C, H, W)."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # torchvision files written before BatchNorm2d tracked batches have no counter; the
        # counter means nothing for a frozen norm, so supply it rather than fail strict loading.
        key = prefix + "num_batches_tracked"
        if key not in state_dict:
            state_dict[key] = torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def forward(self, x: Tensor) -> Tensor:
        # One fused multiply-add: scale = w / sqrt(var + eps), shift = b - mean * scale.
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + shift.reshape(1, -1, 1, 1).to(x.dtype)

    @classmethod
    def from_batch_norm(cls, bn: nn.BatchNorm2d) -> "FrozenBatchNorm2d":
        """A frozen copy of a BatchNorm2d's current statistics and affine parameters."""
        frozen = cls(bn.num_features, bn.eps)
        with torch.no_grad():
            if bn.affine:
                frozen.weight.copy_(bn.weight)
                frozen.bias.copy_(bn.bias)
            if bn.track_running_stats:
                frozen.running_mean.copy_(bn.running_mean)
                frozen.running_var.copy_(bn.running_var)
                frozen.num_batches_tracked.copy_(bn.num_batches_tracked)
        return frozen

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def freeze_batch_norms(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d inside ``module`` (recursively) by a FrozenBatchNorm2d copy.

    Returns the module (or the frozen replacement if ``module`` itself is a BatchNorm2d).
    """
    if isinstance(module, nn.BatchNorm2d):
        return FrozenBatchNorm2d.from_batch_norm(module)
    for name, child in module.named_children():
        replacement = freeze_batch_norms(child)
        if replacement is not child:
            setattr(module, name, replacement)
    return module
