"""PCVOS as a clip-wise VOSMethod: per-clip inference with PMM and intra-clip refinement.

Inference protocol (the public `InferenceCore_Per_Clip`, YouTube-VOS driver):

1. A frame that brings masks is encoded alone; its probability map is the public `interact`:
   other objects' probabilities are zeroed where the new masks are (> 0.5), the new masks are
   set, and the objects are soft-aggregated (`vos_kernels.soft_aggregate`). Its key and the
   value of every object are written to memory (pinned: never dropped by the cap).
2. The frames after it are processed clip by clip (the engine's clips of `clip_length`). All
   frames of a clip are key-encoded as one batch; memory is read (L2 affinity, top-k,
   `vos_kernels.memory_read`) in segments of `pmm_interval` (F = 5) frames: after each segment
   that is not the clip's last, the query key and the raw readout of the segment's last frame
   join memory as temporary entries (PCVOS Eq. 4), dropped before the next clip.
3. The readouts of the clip are refined by the ICR (shared key `input_proj(f16)`), decoded per
   object to stride-4 logits, upsampled x4, passed through a sigmoid and soft-aggregated.
4. Memory is written between clips (key k16, value from the aggregated probabilities). By
   default (`mem_every=None`) the last frame of every clip is written: "every L-th frame" of the
   paper when clips follow the annotated frame, as in the public driver (there it is the public
   rule below with mem_every = L), and still once per clip when a caller's clips start elsewhere
   (e.g. an engine whose first clip holds the annotated frame and L - 1 more). With an explicit
   `mem_every`, the public rule: every frame t of the clip with t - last_memory_frame >=
   mem_every, in order.
5. A mask given in the middle of a clip ends the clip at that frame: the frames up to it are
   segmented for the objects known so far, then step 1 applies (the public driver does the same:
   a propagation pass ends on the next annotated frame, which is predicted and then overwritten).

Images are normalised with the ImageNet statistics and zero-padded to multiples of 16, centred
(`pad_divide_by`); outputs are cropped back.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

import vos_kernels
from vos_models.backbones.resnet import normalize_imagenet
from vos_models.engine.interface import VideoState, VOSMethod, grow_objects, merge_new_masks
from vos_models.errors import VOSInputError

from ..padding import Padding, crop, pad, stride_padding
from .memory import ClipMemory
from .network import STRIDE, PCVOSNetwork, upsample_logits
from .training import pcvos_training_loss


def pad_to_stride(x: Tensor) -> tuple[Tensor, Padding]:
    """Zero-pad the last two dims up to multiples of ``STRIDE``, the odd pixel at the end (the
    public ``pad_divide_by``). Returns the padded tensor and (left, right, top, bottom)."""
    padding = stride_padding(x.shape[-2], x.shape[-1], STRIDE, odd_pixel="end")
    return pad(x, padding), padding


@dataclass(eq=False)
class PCVOSState(VideoState):
    """Per-video PCVOS state: the memory bank (capped by ``max_memory_frames``), the frame
    index of the last memory write, the video's frame size (H, W) and the stride-4 logits of
    the last segmented frames (n, O, Hp/4, Wp/4)."""

    memory: ClipMemory | None = None
    last_memory_frame: int | None = None
    frame_size: tuple[int, int] | None = None
    last_logits: Tensor | None = None


class PCVOS(VOSMethod):
    """Per-Clip VOS (Park et al., CVPR 2022).

    Args:
        clip_length: frames per clip L (paper: 5, 10, 15, 25; any L >= 1 works).
        top_k: memory read keeps the k best memory entries per query (20); None = dense.
        mem_every: memory write interval; None = the last frame of every clip (the paper's
            "every L-th frame"; see step 4 above).
        pmm_interval: PMM segment length F (5); 0 or None disables progressive matching.
        max_memory_frames: cap on permanent memory frames (annotated frames are always kept;
            the oldest other frame is dropped first). Temporary PMM entries come on top.
        key_backbone, key_dim, value_dim, icr_dim, icr_depth, icr_heads, icr_window, use_icr,
        decoder_dim: network shape (see `PCVOSNetwork`; defaults are the paper's).
        train_top_k: top-k used in training (None: dense softmax, as STCN trains).
        bootstrap: (start_warm, end_warm, top_p) of the bootstrapped CE (STCN: 20k, 70k, 0.15).
        dice_weight: weight of the clip-level dice loss (paper: 1).
        train_clips: number of clips after the annotated frame in a training sample (paper: 2).
        batch_objects: decode all objects of a clip as one batch (O * L decoder inputs) instead of
            one object at a time (L each). Same outputs; fewer, larger kernels, but O times the
            decoder's activation memory. Either way the frame-only part of the decoder (its skip
            convs and the query's share of the first block) runs once per frame, not per object.
            None (default): batched on GPU, per object on CPU, where batching saves no work and
            the stride-4 activations of 5 objects x 5 frames at 480p would take gigabytes.
    """

    name = "pcvos"
    state_type = PCVOSState
    clip_wise = True
    cuda_graph_modules = ("network.key_encoder", "network.decoder.shared", "network.decoder.decode_objects")

    def __init__(self, clip_length: int = 5, top_k: int | None = 20, mem_every: int | None = None,
                 pmm_interval: int | None = 5, max_memory_frames: int = 50,
                 key_backbone: str = "resnet50", key_dim: int = 64, value_dim: int = 512,
                 icr_dim: int = 256, icr_depth: int = 2, icr_heads: int = 1,
                 icr_window: tuple[int, int, int] = (2, 7, 7), use_icr: bool = True,
                 decoder_dim: int = 256, train_top_k: int | None = None,
                 bootstrap: tuple[int, int, float] = (20000, 70000, 0.15), dice_weight: float = 1.0,
                 train_clips: int = 2, batch_objects: bool | None = None):
        super().__init__()
        _check_positive("clip_length", clip_length)
        if top_k is not None:
            _check_positive("top_k", top_k)
        if mem_every is not None:
            _check_positive("mem_every", mem_every)
        _check_positive("max_memory_frames", max_memory_frames)
        _check_positive("train_clips", train_clips)
        self.clip_length = int(clip_length)
        self.top_k = top_k
        self.mem_every = mem_every
        self.pmm_interval = int(pmm_interval or 0)
        self.max_memory_frames = int(max_memory_frames)
        self.train_top_k = train_top_k
        self.bootstrap = tuple(bootstrap)
        self.dice_weight = float(dice_weight)
        self.train_clips = int(train_clips)
        self.batch_objects = batch_objects
        self.network = PCVOSNetwork(key_backbone, key_dim, value_dim, icr_dim, icr_depth, icr_heads,
                                    tuple(icr_window), use_icr, decoder_dim)
        self.train_iteration = 0

    # The training iteration drives the bootstrapped-CE schedule; it travels in the state dict
    # ("_extra_state") so that a resumed run continues the schedule where it stopped.
    def get_extra_state(self) -> dict:
        return {"iteration": self.train_iteration}

    def set_extra_state(self, state: dict) -> None:
        self.train_iteration = int(state.get("iteration", 0)) if isinstance(state, dict) else 0

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def step_clip(self, state: PCVOSState, frames: Tensor, new_masks: list[Tensor | None],
                  new_ids: list[list[int]]) -> Tensor:
        """frames (1, L, 3, H, W) in [0, 1] -> probabilities (L, O + 1, H, W)."""
        if frames.dim() != 5 or frames.shape[0] != 1 or frames.shape[2] != 3:
            raise ValueError(f"step_clip: frames must be (1, L, 3, H, W), got {tuple(frames.shape)}")
        length, (height, width) = frames.shape[1], frames.shape[-2:]
        if len(new_masks) != length or len(new_ids) != length:
            raise ValueError(f"step_clip: need one new_masks/new_ids entry per frame ({length}), "
                             f"got {len(new_masks)} and {len(new_ids)}")
        if state.frame_size is None:
            state.frame_size = (height, width)
        elif state.frame_size != (height, width):
            raise ValueError(f"step_clip: frames are {height}x{width} but this video started at "
                             f"{state.frame_size[0]}x{state.frame_size[1]}")
        x, padding = pad_to_stride(normalize_imagenet(frames[0].float()))
        feats = self.network.encode_key(x)
        first = state.frame_index
        outputs: list[Tensor] = []
        start = 0
        for j in range(length):
            masks, ids = new_masks[j], list(new_ids[j])
            if masks is None or len(ids) == 0:
                continue
            predicted = self._segment(state, x, feats, first, start, j + 1, write_last=False)
            before = predicted[-1:] if predicted is not None else None
            outputs += _split(predicted[:-1] if predicted is not None else None, j - start, x)
            outputs.append(self._interact(state, x, feats, first + j, j, before, masks, ids))
            start = j + 1
        if start < length:
            outputs += _split(self._segment(state, x, feats, first, start, length, write_last=True),
                              length - start, x)
        num = state.num_objects
        return torch.cat([crop(grow_objects(p, num), padding) for p in outputs], 0)

    def _interact(self, state, x, feats, frame, j, before, masks, ids) -> Tensor:
        """Merge the masks given on `frame` (public `interact`) and write the frame to memory."""
        fresh = state.add_objects(masks, ids)  # ids <= O: corrections of tracked objects
        num = state.num_objects
        masks_p, _ = pad_to_stride(masks.to(x.dtype))
        if before is None:
            prob = x.new_zeros(1, num + 1, *x.shape[-2:])
        else:
            prob = grow_objects(before, num).clone()
        prob[:, :, masks_p.sum(0) > 0.5] = 0
        prob[0, ids] = masks_p
        prob = vos_kernels.soft_aggregate(prob[:, 1:])
        memory = self._memory(state, feats, len(fresh), frame)
        value = self.network.encode_value(x[j:j + 1], feats.f16[j:j + 1], prob[:, 1:])
        memory.write(frame, feats.k16[j:j + 1].flatten(2), value.flatten(1, 2).flatten(2), pinned=True)
        state.last_memory_frame = frame
        # The contract: the given masks are the output for their objects on this frame.
        return merge_new_masks(prob, masks_p, ids, num)

    def _memory(self, state, feats, new_objects: int, frame: int) -> ClipMemory:
        if state.memory is None:
            h, w = feats.k16.shape[-2:]
            state.memory = ClipMemory(feats.k16.shape[1], self.network.key_comp.out_channels, h * w,
                                      self.max_memory_frames, self._temp_slots(self.clip_length),
                                      device=feats.k16.device, dtype=feats.k16.dtype)
        state.memory.add_objects(new_objects, frame)
        return state.memory

    def _temp_slots(self, length: int) -> int:
        return (length - 1) // self.pmm_interval if self.pmm_interval else 0

    def _segment(self, state, x, feats, first: int, start: int, end: int, write_last: bool):
        """Segment clip frames [start, end) for the known objects -> (n, O+1, Hp, Wp) or None.
        Writes memory frames of the clip afterwards (the last one only if `write_last`)."""
        if state.num_objects == 0:
            return None
        memory: ClipMemory = state.memory
        n = end - start
        memory.reserve_temporary(self._temp_slots(n))
        k16 = feats.k16[start:end]
        readouts = []
        seg = self.pmm_interval or n
        memory.clear_temporary()
        for s in range(0, n, seg):
            e = min(n, s + seg)
            query = k16[s:e].permute(1, 0, 2, 3).reshape(1, k16.shape[1], -1)
            readout = memory.read(query, self.top_k)              # (1, O*Cv, m*P)
            readouts.append(readout)
            if self.pmm_interval and e < n:
                last = readout.view(1, readout.shape[1], e - s, -1)[:, :, -1]
                memory.write_temporary(k16[e - 1:e].flatten(2), last)
        memory.clear_temporary()
        num, h, w = state.num_objects, k16.shape[-2], k16.shape[-1]
        readout = torch.cat(readouts, 2).view(num, -1, n, h, w).transpose(1, 2)  # (O, n, Cv, h, w)
        k_intra = feats.k_intra[start:end].unsqueeze(0) if feats.k_intra is not None else None
        refined = self.network.refine(k_intra, readout.unsqueeze(0))[0]
        logits = self._decode_objects(refined, feats, start, end)
        state.last_logits = logits                                   # (n, O, Hp/4, Wp/4)
        # Aggregation stays float32 under low-precision autocast.
        prob = vos_kernels.soft_aggregate(torch.sigmoid(upsample_logits(logits.float())))
        for i in range(n):
            t = first + start + i
            if self.mem_every is None:
                write = i == n - 1 and write_last
            else:
                write = (i < n - 1 or write_last) and t - state.last_memory_frame >= self.mem_every
            if write:
                value = self.network.encode_value(x[start + i:start + i + 1], feats.f16[start + i:start + i + 1],
                                                  prob[i:i + 1, 1:])
                memory.write(t, k16[i:i + 1].flatten(2), value.flatten(1, 2).flatten(2))
                state.last_memory_frame = t
        return prob

    def _decode_objects(self, refined: Tensor, feats, start: int, end: int) -> Tensor:
        """refined (O, n, Cv, h, w) -> stride-4 logits (n, O, Hp/4, Wp/4), see ``batch_objects``."""
        qv16, f8, f4 = feats.qv16[start:end], feats.f8[start:end], feats.f4[start:end]
        batched = self.batch_objects if self.batch_objects is not None else refined.device.type == "cuda"
        logits = self.network.decode_objects(refined, qv16, f8, f4, one_object_at_a_time=not batched)
        return logits[:, :, 0].transpose(0, 1)

    # ------------------------------------------------------------------ training
    def training_loss(self, batch: dict) -> tuple[Tensor, dict[str, float]]:
        """One annotated frame + ``train_clips`` clips (PCVOS per-clip training, Sec. 3.6); see
        :func:`.training.pcvos_training_loss`."""
        return pcvos_training_loss(self, batch)


def _split(prob: Tensor | None, count: int, x: Tensor) -> list[Tensor]:
    """Per-frame (1, C, Hp, Wp) maps; frames before any object get a background-only map."""
    if count <= 0:
        return []
    if prob is None:
        return [x.new_ones(1, 1, *x.shape[-2:]) for _ in range(count)]
    return list(prob.split(1, 0))


def _check_positive(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise VOSInputError(f"PCVOS: {name} must be a positive integer, got {value!r}")
