"""Synthetic video clips: textured objects moving over textured backgrounds.

The papers pre-train on static images turned into clips; these clips serve the same purpose
without any download, and are the built-in data for demos and tests. Each clip is fully
determined by (seed, index): the same arguments give the same clip on any machine.

A clip has T frames of H x W and 1..max_objects objects. Every object has

- a shape: a radial-Fourier blob (circle, bumpy blob or star) or a superellipse (from diamond to
  rounded rectangle), evaluated analytically on the pixel grid (crisp masks at any resolution);
- a texture: a base colour with low-frequency noise, stripes or a checker pattern;
- motion: a trajectory of centre, scale and rotation interpolated between two random poses, plus
  a travelling sinusoidal deformation of its shape coordinates;
- a depth: objects are drawn back to front, so nearer objects occlude farther ones;
- optionally a later start: with ``entering_probability`` an object (never object 1) appears
  only from a frame in [1, T/2], exercising objects whose first mask arrives mid-video.

The background is a smoothly panning texture (noise plus stripes). The label map holds the
nearest object per pixel; an object whose first frame would be fully hidden is brought to
the front.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class SyntheticClip:
    """frames (T, 3, H, W) float in [0, 1]; labels (T, H, W) uint8 ids; first_frame (O,) the frame
    where each object first appears (0 unless it enters later)."""

    frames: Tensor
    labels: Tensor
    first_frame: Tensor

    @property
    def num_objects(self) -> int:
        return int(self.first_frame.numel())

    def masks(self, max_objects: int | None = None) -> Tensor:
        """(T, O, H, W) float {0, 1}, padded with empty objects to ``max_objects``."""
        count = max_objects or self.num_objects
        ids = torch.arange(1, count + 1, dtype=self.labels.dtype).view(1, -1, 1, 1)
        return (self.labels.unsqueeze(1) == ids).float()


def _clip_seed(seed: int, index: int) -> int:
    # splitmix-style mixing so neighbouring indices give unrelated streams
    x = (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


class SyntheticClipGenerator:
    """Make seeded synthetic clips; ``generator.clip(i)`` is clip i of the stream ``seed``."""

    def __init__(self, height: int = 240, width: int = 432, num_frames: int = 8, *, min_objects: int = 1,
                 max_objects: int = 3, entering_probability: float = 0.0, motion: float = 1.0, seed: int = 0):
        if height < 8 or width < 8:
            raise ValueError(f"SyntheticClipGenerator: height and width must be >= 8, got {height}x{width}")
        if num_frames < 1:
            raise ValueError(f"SyntheticClipGenerator: num_frames must be >= 1, got {num_frames}")
        if not 1 <= min_objects <= max_objects <= 254:
            raise ValueError(f"SyntheticClipGenerator: need 1 <= min_objects <= max_objects <= 254, "
                             f"got {min_objects}, {max_objects}")
        if not 0.0 <= entering_probability <= 1.0:
            raise ValueError(f"SyntheticClipGenerator: entering_probability must be in [0, 1], got {entering_probability}")
        self.height, self.width, self.num_frames = height, width, num_frames
        self.min_objects, self.max_objects = min_objects, max_objects
        self.entering_probability = entering_probability
        self.motion = motion
        self.seed = seed

    # -- textures -------------------------------------------------------------------------
    def _noise(self, g: torch.Generator, channels: int, h: int, w: int, cells: int) -> Tensor:
        coarse = torch.rand(1, channels, cells, max(2, round(cells * w / h)), generator=g)
        return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0]

    def _texture(self, g: torch.Generator, h: int, w: int, background: bool) -> Tensor:
        """(3, h, w) texture in [0, 1]."""
        base = torch.rand(3, 1, 1, generator=g)
        kind = int(torch.randint(0, 3, (1,), generator=g))
        noise = self._noise(g, 3, h, w, int(torch.randint(3, 9, (1,), generator=g)))
        tex = 0.55 * base + 0.45 * noise
        yy = torch.linspace(-1, 1, h).view(h, 1)
        xx = torch.linspace(-1, 1, w).view(1, w)
        angle = float(torch.rand(1, generator=g)) * math.pi
        freq = 4 + 20 * float(torch.rand(1, generator=g))
        phase = xx * math.cos(angle) + yy * math.sin(angle)
        colour2 = torch.rand(3, 1, 1, generator=g)
        if kind == 1:
            pattern = (torch.sin(freq * phase) > 0).float()
            tex = tex * (1 - 0.5 * pattern) + 0.5 * pattern * colour2
        elif kind == 2 and not background:
            pattern = ((torch.sin(freq * xx) > 0) ^ (torch.sin(freq * yy) > 0)).float()
            tex = tex * (1 - 0.5 * pattern) + 0.5 * pattern * colour2
        return tex.clamp(0, 1)

    # -- shapes ---------------------------------------------------------------------------
    @staticmethod
    def _shape_params(g: torch.Generator) -> dict:
        if float(torch.rand(1, generator=g)) < 0.6:
            harmonics = int(torch.randint(0, 6, (1,), generator=g))
            amps = 0.35 * torch.rand(max(harmonics, 1), generator=g) / max(harmonics, 1) ** 0.5
            return {"kind": "blob", "k": torch.arange(2, 2 + len(amps)), "amps": amps * (harmonics > 0),
                    "phases": 2 * math.pi * torch.rand(len(amps), generator=g)}
        return {"kind": "superellipse", "p": 0.8 + 3.5 * float(torch.rand(1, generator=g)),
                "aspect": 0.5 + float(torch.rand(1, generator=g))}

    @staticmethod
    def _inside(params: dict, u: Tensor, v: Tensor) -> Tensor:
        """Shape test in its own coordinates (unit size): (..., H, W) bool."""
        if params["kind"] == "blob":
            rho = torch.sqrt(u * u + v * v)
            theta = torch.atan2(v, u)
            radius = 1 + (params["amps"].view(-1, 1, 1, 1) *
                          torch.cos(params["k"].view(-1, 1, 1, 1) * theta.unsqueeze(0) +
                                    params["phases"].view(-1, 1, 1, 1))).sum(0)
            return rho <= radius * 0.8
        p, aspect = params["p"], params["aspect"]
        return (u.abs() / aspect).pow(p) + (v.abs() * aspect).pow(p) <= 0.7 ** p

    # -- clips ----------------------------------------------------------------------------
    def clip(self, index: int) -> SyntheticClip:
        g = torch.Generator().manual_seed(_clip_seed(self.seed, index))
        t_count, h, w = self.num_frames, self.height, self.width
        num_objects = int(torch.randint(self.min_objects, self.max_objects + 1, (1,), generator=g))
        times = torch.linspace(0, 1, t_count).view(t_count, 1, 1) if t_count > 1 else torch.zeros(1, 1, 1)

        # Background: a larger texture panned across the frame.
        pad = 0.15
        big = self._texture(g, int(h * (1 + 2 * pad)), int(w * (1 + 2 * pad)), background=True)
        pan = (2 * torch.rand(2, generator=g) - 1) * pad * self.motion
        theta = torch.zeros(t_count, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1 / (1 + 2 * pad)
        theta[:, :, 2] = pan.view(1, 2) * (times.view(t_count, 1) - 0.5)
        grid = F.affine_grid(theta, [t_count, 3, h, w], align_corners=False)
        frames = F.grid_sample(big.unsqueeze(0).expand(t_count, -1, -1, -1), grid, align_corners=False)
        labels = torch.zeros(t_count, h, w, dtype=torch.uint8)

        # Pixel coordinates in units of the shorter side, centred.
        short = min(h, w)
        ys = ((torch.arange(h) + 0.5 - h / 2) / (short / 2)).view(1, h, 1)
        xs = ((torch.arange(w) + 0.5 - w / 2) / (short / 2)).view(1, 1, w)
        half_w, half_h = w / short, h / short

        objects = []
        for obj in range(num_objects):
            start = 0
            if obj > 0 and t_count > 2 and float(torch.rand(1, generator=g)) < self.entering_probability:
                start = int(torch.randint(1, max(2, t_count // 2 + 1), (1,), generator=g))
            size = 0.25 + 0.35 * float(torch.rand(1, generator=g))
            c0 = (2 * torch.rand(2, generator=g) - 1) * torch.tensor([half_w, half_h]) * 0.6
            c1 = c0 + (2 * torch.rand(2, generator=g) - 1) * 0.6 * self.motion
            r0 = 2 * math.pi * float(torch.rand(1, generator=g))
            r1 = r0 + (2 * float(torch.rand(1, generator=g)) - 1) * 0.8 * self.motion
            s1 = size * (0.8 + 0.4 * float(torch.rand(1, generator=g)))
            deform = 0.15 * float(torch.rand(1, generator=g))
            deform_freq = 2 + 3 * float(torch.rand(1, generator=g))
            centre = c0.view(1, 2) + (c1 - c0).view(1, 2) * times.view(t_count, 1)
            angle = r0 + (r1 - r0) * times
            scale = size + (s1 - size) * times
            # Work only inside the box the object can reach over the clip (a shape never leaves
            # 2 x its scale around its centre): most of the frame is never touched.
            reach = 2.0 * max(size, s1)
            box = self._box(centre, reach, short, h, w)
            if box is None:
                continue
            (y0, y1), (x0, x1) = box
            dx = xs[:, :, x0:x1] - centre[:, 0].view(t_count, 1, 1)
            dy = ys[:, y0:y1] - centre[:, 1].view(t_count, 1, 1)
            cos, sin = torch.cos(angle), torch.sin(angle)
            u = (cos * dx + sin * dy) / scale
            v = (-sin * dx + cos * dy) / scale
            u = u + deform * torch.sin(deform_freq * v + 2 * math.pi * times)  # travelling deformation
            params = self._shape_params(g)
            inside = self._inside(params, u, v)
            inside[:start] = False
            texture = self._texture(g, 64, 64, background=False)
            tex_grid = torch.stack([u.clamp(-1, 1), v.clamp(-1, 1)], dim=-1)
            colour = F.grid_sample(texture.unsqueeze(0).expand(t_count, -1, -1, -1), tex_grid, align_corners=False)
            objects.append((obj + 1, start, box, inside, colour))

        # Depth order: a random permutation, then objects hidden on their first frame move to the front.
        order = [objects[i] for i in torch.randperm(len(objects), generator=g).tolist()]
        first_labels = labels.clone()
        for obj_id, start, ((y0, y1), (x0, x1)), inside, _ in order:
            first_labels[:, y0:y1, x0:x1][inside] = obj_id
        hidden = [o for o in order if o[3][o[1]].any() and not (first_labels[o[1]] == o[0]).any()]
        order = [o for o in order if all(o is not x for x in hidden)] + hidden
        for obj_id, _, ((y0, y1), (x0, x1)), inside, colour in order:  # back to front
            labels[:, y0:y1, x0:x1][inside] = obj_id
            region = frames[:, :, y0:y1, x0:x1]
            region.copy_(torch.where(inside.unsqueeze(1), colour, region))
        # Renumber 1..O in order of id, dropping objects that never became visible.
        present = [o[0] for o in sorted(objects, key=lambda o: o[0]) if (labels == o[0]).any()]
        lookup = torch.zeros(256, dtype=torch.uint8)
        lookup[torch.tensor(present, dtype=torch.long)] = torch.arange(1, len(present) + 1, dtype=torch.uint8)
        labels = lookup[labels.long()]
        starts = {o[0]: o[1] for o in objects}
        first = torch.tensor([starts[i] for i in present], dtype=torch.long)
        return SyntheticClip(frames.clamp(0, 1), labels, first)

    @staticmethod
    def _box(centre: Tensor, reach: float, short: int, h: int, w: int):
        """Pixel ranges ((y0, y1), (x0, x1)) covering centre +- reach over the clip, or None."""
        half = short / 2
        x0 = max(0, int(math.floor((centre[:, 0].min().item() - reach) * half + w / 2)))
        x1 = min(w, int(math.ceil((centre[:, 0].max().item() + reach) * half + w / 2)) + 1)
        y0 = max(0, int(math.floor((centre[:, 1].min().item() - reach) * half + h / 2)))
        y1 = min(h, int(math.ceil((centre[:, 1].max().item() + reach) * half + h / 2)) + 1)
        if x0 >= x1 or y0 >= y1:
            return None
        return (y0, y1), (x0, x1)
