"""Which problems the Triton launchers serve (pure Python: importable without triton).

The launchers raise on the same limits; `vos_kernels._dispatch.would_serve` consults
`unsupported` to say, without a GPU, whether a call of given shapes would run on Triton.
"""
from __future__ import annotations

import torch

from . import configs

TEMPLATE_UPDATE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def unsupported(op: str, *, dtype: torch.dtype | None = None, key_dim: int | None = None,
                window: tuple[int, int, int] | None = None, **_ignored) -> str | None:
    """Why the Triton backend cannot serve `op` for these sizes (None when it can).

    key_dim: memory_read's Ck; window: clip_window_attention's (wt, wh, ww); dtype: the inputs'.
    Every head dim is served (the window kernels chunk it), as is every top_k <= M.
    """
    if op == "memory_read" and key_dim is not None and key_dim > configs.MEMORY_READ_MAX_KEY_CHANNELS:
        return (f"memory_read: the triton backend holds the key channels in registers and serves Ck <= "
                f"{configs.MEMORY_READ_MAX_KEY_CHANNELS}, got {key_dim}")
    if op == "clip_window_attention" and window is not None:
        tokens = window[0] * window[1] * window[2]
        if tokens > configs.WINDOW_MAX_TOKENS:
            return (f"clip_window_attention: the triton backend keeps a whole window on chip and serves windows of "
                    f"at most {configs.WINDOW_MAX_TOKENS} tokens, got {tuple(window)} ({tokens} tokens)")
    if op == "template_update" and dtype is not None and dtype not in TEMPLATE_UPDATE_DTYPES:
        return f"template_update: the triton backend serves float32, float16 and bfloat16, got {dtype}"
    return None
