import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a reference computes in: float32 for float16/bfloat16, else the dtype itself."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
