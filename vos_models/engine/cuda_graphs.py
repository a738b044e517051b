"""CUDA graphs for the fixed-shape parts of a method (backbones, decoders).

A VOS method runs the same convolutional trunk on every frame of a video at one shape, which
makes the trunk a good CUDA graph: one replay launches its hundreds of kernels at once. The
state-dependent parts (memory banks that grow, objects that appear) stay eager.

A method lists such submodules by attribute path in its declared ``cuda_graph_modules`` (e.g.
``("network.key_encoder", "network.decoder")``, or a submodule's method such as
``"network.decoder.decode_objects"``). :func:`enable_cuda_graphs` replaces the
``forward`` (or the named method) of each one (an instance attribute: parameter names and state dicts are
unchanged) by a :class:`GraphedForward`:

* the call's signature (every tensor argument's shape, dtype and device, every other argument
  by value, and the autocast state) selects a captured graph; a new signature captures one
  (after two eager warm-up runs on a side stream, as the CUDA graph recipe asks);
* the tensor arguments are copied into the graph's static inputs, the graph is replayed, and the
  outputs are *cloned* out of the static outputs: the method may keep them in its state (TTVOS
  keeps the previous frame's features) without the next replay overwriting them.

All graphs of one wrapper share one memory pool. The capture itself is injectable
(``capture=``) so the bookkeeping is tested on CPU with an eager stand-in; on CUDA it is
``torch.cuda.CUDAGraph``.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from ..errors import VOSInputError
from .interface import VOSMethod


def _signature(leaves: list[Any]) -> tuple:
    key = []
    for leaf in leaves:
        if isinstance(leaf, Tensor):
            key.append(("tensor", tuple(leaf.shape), leaf.dtype, str(leaf.device), leaf.is_contiguous(),
                        leaf.is_contiguous(memory_format=torch.channels_last) if leaf.dim() == 4 else None))
        else:
            key.append(("value", leaf))
    device = next((leaf.device.type for leaf in leaves if isinstance(leaf, Tensor)), "cpu")
    autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device) if device in ("cuda", "cpu") else None)
    return tuple(key) + (autocast,)


class _Graph:
    """One captured graph: static inputs (tensor leaves), static outputs, replay."""

    def __init__(self, static_leaves: list[Any], spec, static_out: Any, replay: Callable[[], None]):
        self.static_leaves, self.spec, self.static_out, self.replay = static_leaves, spec, static_out, replay


def cuda_capture(fn: Callable[..., Any], args: tuple, kwargs: dict, pool) -> tuple[Any, Callable[[], None]]:
    """Warm up ``fn(*args, **kwargs)`` twice on a side stream, capture it; (static output, replay)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn(*args, **kwargs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn(*args, **kwargs)
    return out, graph.replay


def eager_capture(fn: Callable[..., Any], args: tuple, kwargs: dict, pool) -> tuple[Any, Callable[[], None]]:
    """A CPU stand-in for :func:`cuda_capture` with the same contract: "replay" re-runs ``fn``
    on the static inputs and writes into the static outputs (tests of the bookkeeping)."""
    out = fn(*args, **kwargs)

    def replay() -> None:
        fresh = fn(*args, **kwargs)
        for dst, src in zip(pytree.tree_leaves(out), pytree.tree_leaves(fresh)):
            if isinstance(dst, Tensor):
                dst.copy_(src)
    return out, replay


class GraphedForward:
    """A drop-in ``forward``: replays a captured graph per call signature (see module doc)."""

    def __init__(self, forward: Callable[..., Any], *, capture: Callable = cuda_capture, max_graphs: int = 8):
        self.forward = forward
        self.capture = capture
        self.max_graphs = max_graphs
        self.graphs: dict[tuple, _Graph] = {}
        self.pool = torch.cuda.graph_pool_handle() if capture is cuda_capture else None
        self.captures = 0

    def __call__(self, *args, **kwargs):
        leaves, spec = pytree.tree_flatten((args, kwargs))
        key = _signature(leaves)
        graph = self.graphs.get(key)
        if graph is None:
            if len(self.graphs) >= self.max_graphs:
                raise RuntimeError(f"CUDA graphs: more than {self.max_graphs} input shapes for one module; the "
                                   "shapes are not fixed (use compile or the eager path for this input)")
            static = [leaf.clone() if isinstance(leaf, Tensor) else leaf for leaf in leaves]
            s_args, s_kwargs = pytree.tree_unflatten(static, spec)
            out, replay = self.capture(self.forward, s_args, s_kwargs, self.pool)
            graph = self.graphs[key] = _Graph(static, spec, out, replay)
            self.captures += 1
        for dst, src in zip(graph.static_leaves, leaves):
            if isinstance(dst, Tensor):
                dst.copy_(src)
        graph.replay()
        return pytree.tree_map(lambda t: t.clone() if isinstance(t, Tensor) else t, graph.static_out)


def enable_cuda_graphs(method: VOSMethod, *, capture: Callable = cuda_capture) -> list[str]:
    """Replace the forward of every submodule in ``method.cuda_graph_modules``; returns their paths."""
    paths = tuple(method.cuda_graph_modules)
    if not paths:
        raise VOSInputError(f"cuda_graphs: method {method.name!r} declares no fixed-shape submodules "
                            "(cuda_graph_modules); use compile='reduce-overhead' instead")
    done = []
    for path in paths:
        owner, name = _resolve(method, path)
        if isinstance(getattr(owner, name), GraphedForward):
            continue
        setattr(owner, name, GraphedForward(getattr(owner, name), capture=capture))
        done.append(path)
    return done


def _resolve(method: nn.Module, path: str) -> tuple[nn.Module, str]:
    """A submodule path ("network.decoder": its forward) or a path to one of a submodule's
    methods ("network.decoder.decode_objects") -> (the submodule, the attribute to replace)."""
    try:
        return method.get_submodule(path), "forward"
    except AttributeError:
        pass
    parent, _, name = path.rpartition(".")
    try:
        owner = method.get_submodule(parent)
    except AttributeError:
        owner = None
    if owner is None or not callable(getattr(owner, name, None)) or isinstance(getattr(owner, name), nn.Module):
        raise ValueError(f"cuda_graphs: {path!r} in cuda_graph_modules is neither a submodule nor a method of one")
    return owner, name
