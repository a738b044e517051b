"""template_update benchmark: B = 1, 4, 16 objects, Nt = Ct = 128, P = 6480 (480x864 at stride 8)
and 1620; forward, backward, forward+backward; the blend step (a template is given), which is
what runs every frame. Peers: the eager reference, torch.compile of it, and (forward) the
product key @ value^T alone with torch.bmm, the floor the fused forward is held to.

Floor (CPU, 2 threads, float32, ~195 GFLOP/s torch.mm, ~36 GB/s), written before optimising:
- forward, B = 4, P = 6480: 2 B Nt Ct P = 0.85 GFLOP -> 4.4 ms; it reads key and value once
  (2 B 128 P 4 B = 26.5 MB -> 0.74 ms), so it is compute-bound; the softmax and blend touch
  B Nt Ct = 65 k numbers (~0.1 ms). B = 1 / 16: 1.1 / 17.4 ms. P = 1620: a quarter.
- backward: two GEMMs of the same size (grad_key = dS @ value, grad_value = dS^T @ key):
  1.7 GFLOP -> 8.7 ms, plus writing the two gradients (26.5 MB, 0.7 ms, overlappable).
- forward+backward at B = 4: ~13 ms. Eager autograd measures ~35 ms on a quiet machine.
Prediction: fused forward = bmm + ~3 % (acceptance: <= 1.15x bmm alone, same run);
backward ~10 ms (2.5x eager); forward+backward ~15 ms (>= 2x eager, the acceptance); the
compiled reference close to bmm + a fused softmax kernel in the forward, eager-like backward.
Memory floor column (benchmarks/bandwidth.py): reads key (B Nt P), value (B Ct P), template
(B Nt Ct), weight (B), writes B Nt Ct; backward also reads the upstream and writes the four
gradients. The op is compute-bound (above), so its % of memory floor is ~15 % at best.
Outcome (commit 2559acc, shared 2-core machine at load 13-17, so absolute times are ~10x the
floor and quantised by the scheduler; ratios within the run are what it can measure), B = 4,
P = 6480: forward fused 56.0 ms vs bmm alone 54.0 ms (1.04x, acceptance <= 1.15x) vs eager
196 ms (3.5x) vs compiled 119 ms; forward+backward fused 188 ms vs eager 840 ms (4.5x,
acceptance >= 2x) vs compiled 353 ms. Full table: benchmarks/results/template_update.csv.
"""
from __future__ import annotations

import math

import torch

import vos_kernels
from benchmarks.bandwidth import compulsory_bytes
from benchmarks.harness import BenchCase, backward_only, default_compare, forward_backward, fused_variants
from vos_kernels.reference import template_update_reference

NT = CT = 128
TINY_CHANNELS = 8  # --tiny (dry runs): Nt = Ct = 8, P = 40
WRT = ("key", "value", "template", "weight")


def _reference(key, value, template, weight):
    return template_update_reference(key, value, template, weight)


def _configure_compile() -> None:
    # One compiled reference serves every shape and grad mode here (about 12 graphs); dynamo's
    # default limit of 8 would silently fall back to eager for the rest.
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), 64))
    # The backward-only timing replays one graph (retain_graph=True), which AOTAutograd's
    # donated buffers forbid.
    torch._functorch.config.donated_buffer = False


class _Scores:
    """Output of the `bmm alone` variant: the (B, Nt, Ct) scores, not the op's output."""

    def __init__(self, scores: torch.Tensor):
        self.scores = scores


def _bmm_alone(key, value, template, weight):
    return _Scores(torch.bmm(key, value.transpose(1, 2)))


def _compare_forward(latest_inputs: dict):
    """Fused outputs: allclose. `bmm alone`: its scores, finished by softmax and blend in eager,
    must give the baseline's output (so its pass column checks that it computed the right thing)."""
    def compare(out, ref) -> bool:
        if isinstance(out, _Scores):
            x = latest_inputs
            incoming = torch.softmax(out.scores * (1 / math.sqrt(x["key"].shape[-1])), -1)
            w = x["weight"].view(-1, 1, 1)
            out = x["template"] / (1 + w) + incoming * w / (1 + w)
        return default_compare(out, ref)
    return compare


def _variants(device: str) -> dict:
    variants = {"eager": _reference, "compiled": torch.compile(_reference, dynamic=False)}
    fused = fused_variants(device, "template_update", lambda backend: lambda key, value, template, weight:
                           vos_kernels.template_update(key, value, template, weight, backend=backend))
    return {**variants, **fused}


def _floor(direction: str):
    """Bytes moved (benchmarks/bandwidth.py): read key, value, template, weight; write a template."""
    return lambda key, value, template, weight: compulsory_bytes(
        direction, [key, value, template, weight], template.numel(), [key, value, template, weight], key.dtype)


def cases(device: str, quick: bool, tiny: bool = False) -> list[BenchCase]:
    _configure_compile()
    dtypes = [torch.float32] + ([torch.bfloat16] if device == "cuda" else [])
    batches, positions = ((4,), (6480,)) if quick else ((1, 4, 16), (6480, 1620))
    nt = ct = TINY_CHANNELS if tiny else NT
    if tiny:
        batches, positions = (2,), (40,)
    out = []
    for dtype in dtypes:
        for P in positions:
            for B in batches:
                latest: dict = {}

                def setup(B=B, P=P, dtype=dtype, latest=latest, nt=nt, ct=ct):
                    g = torch.Generator().manual_seed(B * 7 + P)
                    inputs = {"key": torch.randn(B, nt, P, generator=g), "value": torch.randn(B, ct, P, generator=g),
                              "template": torch.softmax(torch.randn(B, nt, ct, generator=g), -1),
                              "weight": torch.rand(B, generator=g) * 2}
                    inputs = {k: v.to(device, dtype).requires_grad_() for k, v in inputs.items()}
                    latest.clear()
                    latest.update({k: v.detach() for k, v in inputs.items()})
                    return inputs

                shape = f"B={B} Nt={nt} Ct={ct} P={P}"
                forward = _variants(device)
                detached = {k: (lambda f: lambda **x: f(**{n: t.detach() for n, t in x.items()}))(f)
                            for k, f in {**forward, "bmm alone": _bmm_alone}.items()}
                out.append(BenchCase("template_update", shape, "forward", dtype, device, setup, detached,
                                     compare=_compare_forward(latest), floor_bytes=_floor("forward")))
                if not quick:
                    out.append(BenchCase("template_update", shape, "backward", dtype, device, setup,
                                         {k: backward_only(f, WRT) for k, f in forward.items()},
                                         floor_bytes=_floor("backward")))
                out.append(BenchCase("template_update", shape, "forward+backward", dtype, device, setup,
                                     {k: forward_backward(f, WRT) for k, f in forward.items()},
                                     floor_bytes=_floor("forward+backward")))
    return out
