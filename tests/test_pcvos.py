"""PCVOS unit tests on a small configuration (fast on CPU); parity lives in test_pcvos_parity.py."""

import pytest
import torch

from converter_checks import assert_converter_is_strict

import vos_kernels
from vos_models import build_method
from vos_models.engine.session import VideoSession
from vos_models.methods.pcvos import PCVOS
from vos_models.methods.pcvos.convert import PublicCheckpointError, convert_public_state_dict
from vos_models.methods.pcvos.memory import ClipMemory
from vos_models.methods.pcvos.network import PCVOSNetwork
from vos_models.methods.pcvos.refinement import IntraClipRefinement, effective_window

SMALL = dict(key_backbone="resnet18", key_dim=16, value_dim=32, icr_dim=16, decoder_dim=16)


def small(**over):
    torch.manual_seed(0)
    return PCVOS(**{**SMALL, **over}).eval()


def blob_masks(h, w, centres, radius=10):
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([(((yy - cy) ** 2 + (xx - cx) ** 2) < radius ** 2).float() for cy, cx in centres])


def run_video(model, frames, masks_at, clip_length):
    """frames (T, 3, H, W); masks_at {t: (K, H, W)}; engine-like clips; -> (T, O+1, H, W)."""
    session, out, ids_next = VideoSession(model), [], 1
    for s in range(0, frames.shape[0], clip_length):
        idx = range(s, min(s + clip_length, frames.shape[0]))
        masks, ids = [], []
        for t in idx:
            m = masks_at.get(t)
            masks.append(m)
            ids.append(list(range(ids_next, ids_next + len(m))) if m is not None else [])
            ids_next += len(m) if m is not None else 0
        out.append(session.step_clip(frames[list(idx)].unsqueeze(0), masks, ids))
    num = out[-1].shape[1]
    return torch.cat([torch.cat([o, o.new_zeros(o.shape[0], num - o.shape[1], *o.shape[2:])], 1) for o in out]), \
        session.state


def test_registry_builds_pcvos_with_options():
    model = build_method("pcvos", clip_length=10, top_k=7, max_memory_frames=4, **SMALL)
    assert isinstance(model, PCVOS) and model.clip_wise and model.clip_length == 10
    assert model.top_k == 7 and model.max_memory_frames == 4 and model.mem_every is None
    with pytest.raises(ValueError, match="clip_length"):
        PCVOS(clip_length=0)


@pytest.mark.parametrize("clip_length", [1, 4, 7])
def test_step_clip_shapes_masks_and_late_object(clip_length):
    """Odd size (crop back from the /16 padding), a second object on frame 6 (mid-clip)."""
    model = small(clip_length=clip_length, pmm_interval=2)
    h, w, T = 50, 70, 9
    torch.manual_seed(1)
    frames = torch.rand(T, 3, h, w)
    first = blob_masks(h, w, [(20, 20)])
    later = blob_masks(h, w, [(30, 50)], radius=8)
    prob, state = run_video(model, frames, {0: first, 6: later}, clip_length)
    assert prob.shape == (T, 3, h, w) and torch.isfinite(prob).all()
    assert torch.allclose(prob.sum(1), torch.ones(()), atol=1e-5)
    assert torch.equal(prob[0, 1], first[0]) and torch.equal(prob[6, 2], later[0])
    assert (prob[:6, 2] == 0).all()               # object 2 does not exist before frame 6
    assert state.num_objects == 2 and state.frame_index == T
    assert 6 in state.memory.frames and 0 in state.memory.frames
    assert state.memory.group_start == [0, 6]


def test_frames_before_the_first_mask_are_background():
    model = small(clip_length=4)
    frames = torch.rand(4, 3, 32, 48)
    masks = blob_masks(32, 48, [(16, 24)], radius=6)
    state = model.new_video()
    out = model.step_clip(state, frames.unsqueeze(0), [None, None, masks, None], [[], [], [1], []])
    assert out.shape == (4, 2, 32, 48)
    assert (out[:2, 0] == 1).all() and (out[:2, 1] == 0).all()
    assert torch.equal(out[2, 1], masks[0])


def test_memory_writes_every_clip_length_and_cap_keeps_annotated_frame():
    model = small(clip_length=3, max_memory_frames=3)
    frames = torch.rand(16, 3, 32, 32)
    first = blob_masks(32, 32, [(16, 16)], radius=6)
    session = VideoSession(model)
    session.step_clip(frames[:1].unsqueeze(0), [first], [[1]])   # public clips: after the mask
    for s in range(1, 16, 3):
        n = min(3, 16 - s)
        session.step_clip(frames[s:s + n].unsqueeze(0), [None] * n, [[]] * n)
    state = session.state
    # written: 0, 3, 6, 9, 12, 15 -> cap 3 keeps the annotated frame and the two most recent
    assert state.memory.frames == [0, 12, 15]
    assert state.memory.capacity <= 3 + model._temp_slots(3)


def test_memory_is_written_once_per_clip_whatever_the_clip_alignment():
    """Engine-style clips [0..3], [4..7], ... (the annotated frame inside the first clip): the last
    frame of each clip joins memory; the explicit public rule (mem_every=4) writes frame t with
    t - last >= 4."""
    frames = torch.rand(12, 3, 32, 32)
    first = blob_masks(32, 32, [(16, 16)], radius=6)
    for mem_every, expected in [(None, [0, 3, 7, 11]), (4, [0, 4, 8])]:
        model = small(clip_length=4, mem_every=mem_every)
        _, state = run_video(model, frames, {0: first}, 4)
        assert state.memory.frames == expected, mem_every


def test_memory_views_and_groups_match_separate_reads():
    """A late object's group reads only its suffix of memory: equal to a bank of its own."""
    torch.manual_seed(2)
    P, ck, cv = 6, 4, 3
    mem = ClipMemory(ck, cv, P, max_frames=5, temp_slots=1, device="cpu")
    mem.add_objects(1, frame=0)
    keys = [torch.randn(1, ck, P) for _ in range(3)]
    vals = [torch.randn(1, 2 * cv, P) for _ in range(3)]
    mem.write(0, keys[0], vals[0][:, :cv], pinned=True)
    mem.add_objects(1, frame=4)
    mem.write(4, keys[1], vals[1], pinned=True)
    mem.write(8, keys[2], vals[2])
    q = torch.randn(1, ck, 10)
    out = mem.read(q, top_k=4)
    with vos_kernels.use_backend("reference"):
        a = vos_kernels.memory_read(q, torch.cat(keys, 2), torch.cat([vals[0][:, :cv], vals[1][:, :cv],
                                                                     vals[2][:, :cv]], 2), top_k=4)
        b = vos_kernels.memory_read(q, torch.cat(keys[1:], 2), torch.cat([v[:, cv:] for v in vals[1:]], 2), top_k=4)
    torch.testing.assert_close(out, torch.cat([a, b], 1))
    # a temporary entry is read by both groups and cleared by the next permanent write
    mem.write_temporary(keys[0], vals[0])
    assert mem.read(q, top_k=None).shape == (1, 2 * cv, 10) and mem.num_temp == 1
    mem.write(9, keys[0], vals[0])
    assert mem.num_temp == 0 and mem.frames == [0, 4, 8, 9]


def test_pmm_reads_temporary_entries_inside_a_clip():
    """With F = 2, frames 2.. of a clip see (query key, readout) of frames 1, 3 (Eq. 4)."""
    model = small(clip_length=5, pmm_interval=2, top_k=None)
    frames = torch.rand(6, 3, 32, 32)
    first = blob_masks(32, 32, [(16, 16)], radius=6)
    reads = []
    original = ClipMemory.read

    def spy(self, query, top_k):
        reads.append((query.shape[-1], (len(self.frames) + self.num_temp)))
        return original(self, query, top_k)
    ClipMemory.read = spy
    try:
        session = VideoSession(model)
        session.step_clip(frames[:1].unsqueeze(0), [first], [[1]])
        session.step_clip(frames[1:].unsqueeze(0), [None] * 5, [[]] * 5)
    finally:
        ClipMemory.read = original
    P = 4  # 32x32 at stride 16 -> 2x2
    assert reads == [(2 * P, 1), (2 * P, 2), (1 * P, 3)]
    no_pmm = small(clip_length=5, pmm_interval=0, top_k=None)
    s2 = VideoSession(no_pmm)
    s2.step_clip(frames[:1].unsqueeze(0), [first], [[1]])
    out2 = s2.step_clip(frames[1:].unsqueeze(0), [None] * 5, [[]] * 5)
    session = VideoSession(model)
    session.step_clip(frames[:1].unsqueeze(0), [first], [[1]])
    out1 = session.step_clip(frames[1:].unsqueeze(0), [None] * 5, [[]] * 5)
    assert not torch.allclose(out1[2:], out2[2:])      # temporary memory changes later frames


def test_icr_small_grids_shrink_the_window():
    assert effective_window((1, 15, 27), (2, 7, 7), (1, 3, 3)) == ((1, 7, 7), (0, 3, 3))
    assert effective_window((5, 4, 9), (2, 7, 7), (1, 3, 3)) == ((2, 4, 7), (1, 0, 3))
    icr = IntraClipRefinement(16, 32, depth=2, num_heads=2, window=(2, 7, 7))
    for size in [(1, 3, 5), (3, 9, 8), (2, 7, 7)]:
        key, value = torch.randn(1, *size, 16), torch.randn(1, 2, *size, 32)
        out = icr(key, value)
        assert out.shape == value.shape and torch.isfinite(out).all()


def test_icr_matches_swin_roll_and_mask_formulation():
    """Explicit padding + the op's shifted windows == Video Swin's pad, roll, -100 mask."""
    torch.manual_seed(3)
    icr = IntraClipRefinement(8, 8, depth=2, num_heads=1, window=(2, 3, 3)).eval()
    for p in icr.parameters():
        torch.nn.init.normal_(p, std=0.3)
    key, value = torch.randn(1, 3, 4, 5, 8), torch.randn(1, 1, 3, 4, 5, 8)
    ours = icr(key, value)[0, 0]
    # independent Swin-style computation
    v = value[0, 0]
    for i, blk in enumerate(icr.layers[0].blocks):
        shift = (0, 0, 0) if i % 2 == 0 else (1, 1, 1)
        wd = (2, 3, 3)
        kn = torch.nn.functional.pad(blk.norm1(key[0]), (0, 0, 0, 1, 0, 2, 0, 1))   # -> (4, 6, 6)
        vn = torch.nn.functional.pad(blk.norm1_v(v), (0, 0, 0, 1, 0, 2, 0, 1))
        Dp, Hp, Wp = kn.shape[:3]
        region = torch.zeros(Dp, Hp, Wp, dtype=torch.long)
        if any(shift):
            kn = torch.roll(kn, [-s for s in shift], (0, 1, 2))
            vn = torch.roll(vn, [-s for s in shift], (0, 1, 2))
            c = 0
            for d in (slice(0, -2), slice(-2, -1), slice(-1, None)):
                for h in (slice(0, -3), slice(-3, -1), slice(-1, None)):
                    for w in (slice(0, -3), slice(-3, -1), slice(-1, None)):
                        region[d, h, w] = c
                        c += 1
        coords = torch.stack(torch.meshgrid(*[torch.arange(n) for n in (Dp, Hp, Wp)], indexing="ij"), -1)
        win = (coords[..., 0] // 2) * 100 + (coords[..., 1] // 3) * 10 + coords[..., 2] // 3
        q = blk.attn.qk(kn).reshape(-1, 8)
        vv = blk.attn.v(vn).reshape(-1, 8)
        pos, win, region = coords.reshape(-1, 3), win.reshape(-1), region.reshape(-1)
        wpos = pos % torch.tensor(wd)
        off = wpos[:, None] - wpos[None]
        idx = (off[..., 0] + 1) * 25 + (off[..., 1] + 2) * 5 + off[..., 2] + 2
        s = (q * 8 ** -0.5) @ q.T + blk.attn.relative_position_bias_table[idx, 0]
        s = s + (region[:, None] != region[None]) * -100.0
        s = s.masked_fill(win[:, None] != win[None], float("-inf"))
        o = blk.attn.proj(torch.softmax(s, -1) @ vv).reshape(Dp, Hp, Wp, 8)
        if any(shift):
            o = torch.roll(o, list(shift), (0, 1, 2))
        v = v + o[:3, :4, :5]
        v = v + blk.mlp(blk.norm2(v))
    torch.testing.assert_close(ours, icr.norm(v), atol=1e-5, rtol=1e-5)


def test_training_loss_backward_and_iteration_state():
    model = small(bootstrap=(0, 2, 0.5))
    model.train()
    torch.manual_seed(4)
    B, T, O, H, W = 2, 7, 2, 32, 48
    masks = torch.zeros(B, T, O, H, W)
    masks[:, :, 0, 4:16, 4:20] = 1
    masks[0, :, 1, 20:30, 30:44] = 1
    batch = {"frames": torch.rand(B, T, 3, H, W), "masks": masks, "num_objects": torch.tensor([2, 1])}
    loss, logs = model.training_loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and {"ce", "dice", "iou_clip1", "iou_clip2"} <= set(logs)
    grads = {n: p.grad for n, p in model.named_parameters()}
    for part in ("key_encoder", "value_encoder", "refine_transformer", "decoder", "key_proj"):
        assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if part in n), part
    assert model.state_dict()["_extra_state"] == {"iteration": 1}
    fresh = small()
    fresh.load_state_dict(model.state_dict())
    assert fresh.train_iteration == 1
    with pytest.raises(ValueError, match="at least 3 frames"):
        model.training_loss({**batch, "frames": batch["frames"][:, :2], "masks": masks[:, :2]})


def _public_style(model):
    """Invert the converter's renames (what a public checkpoint of this config would hold)."""
    out = {}
    for k, v in model.state_dict().items():
        if k == "_extra_state":
            continue
        k = k[len("network."):]
        k = k.replace("key_encoder.layer1.", "key_encoder.res2.").replace("value_encoder.trunk.", "value_encoder.")
        out[k] = v
        if k.endswith("attn.relative_position_bias_table"):
            out[k.replace("relative_position_bias_table", "relative_position_index")] = torch.zeros(98, 98, dtype=torch.long)
    return out


def test_converter_round_trip_and_strictness():
    model = small()
    public = _public_style(model)
    converted = convert_public_state_dict(public, **SMALL)
    other = PCVOS(**SMALL)
    other.load_state_dict(converted, strict=True)
    for k, v in model.state_dict().items():
        if k != "_extra_state":
            assert torch.equal(other.state_dict()[k], v), k
    assert convert_public_state_dict({"module." + k: v for k, v in public.items()}, **SMALL).keys() == converted.keys()

    assert_converter_is_strict(convert_public_state_dict, public, missing="decoder.pred.weight",
                               misshaped="key_comp.weight", expected_shape=[32, 256, 3, 3],
                               error=PublicCheckpointError, **SMALL)
    with pytest.raises(PublicCheckpointError, match="missing"):
        convert_public_state_dict(public)       # a small model's weights are not the paper model's
    with pytest.raises(PublicCheckpointError, match="expected a state dict"):
        convert_public_state_dict([1, 2])


def test_command_line_options_reach_the_model():
    from vos_models.cli.segment import build_parser
    from vos_models.cli.common import add_method_specific_arguments, method_config_from_args
    from vos_models.registry import method_options

    assert {"clip_length", "top_k", "max_memory_frames", "mem_every", "pmm_interval"} <= set(method_options("pcvos"))
    argv = ["--input", "x", "--method", "pcvos", "--clip-length", "15", "--top-k", "10",
            "--max-memory-frames", "8", "--set", "key_backbone=resnet18"]
    parser = build_parser()
    add_method_specific_arguments(parser, argv)
    config = method_config_from_args(parser.parse_args(argv))
    assert config == {"clip_length": 15, "top_k": 10, "max_memory_frames": 8, "key_backbone": "resnet18"}


def test_shared_decoder_and_fuser_parts_equal_the_per_object_computation():
    """The frame-only parts (skip convs, the query's / f16's share of the first block) computed
    once per frame give what the public per-object decoder and fuser give, and gradients agree."""
    torch.manual_seed(0)
    net = PCVOSNetwork("resnet18", key_dim=8, value_dim=16, icr_dim=8, decoder_dim=8).double()
    objects, frames, h, w = 3, 2, 3, 5
    values = torch.randn(objects, frames, 16, h, w, dtype=torch.float64, requires_grad=True)
    qv16 = torch.randn(frames, 16, h, w, dtype=torch.float64, requires_grad=True)
    f8 = torch.randn(frames, 128, 2 * h, 2 * w, dtype=torch.float64)
    f4 = torch.randn(frames, 64, 4 * h, 4 * w, dtype=torch.float64)
    shared = net.decode_objects(values, qv16, f8, f4)
    per_object = torch.stack([net.decode(values[o], qv16, f8, f4) for o in range(objects)])
    assert shared.shape == (objects, frames, 1, 4 * h, 4 * w)
    torch.testing.assert_close(shared, per_object, atol=1e-10, rtol=1e-10)
    grads = torch.autograd.grad(shared.square().sum(), (values, qv16))
    ref_grads = torch.autograd.grad(per_object.square().sum(), (values, qv16))
    for got, ref in zip(grads, ref_grads):
        torch.testing.assert_close(got, ref, atol=1e-10, rtol=1e-10)
    # The fuser: f16 given once per frame vs repeated for each object, cat'ed as the public block1.
    fuser = net.value_encoder.fuser
    x = torch.randn(frames * objects, 256, h, w, dtype=torch.float64)
    f16 = torch.randn(frames, 256, h, w, dtype=torch.float64)
    repeated = f16.repeat_interleave(objects, 0)   # frame-major, as the value encoder groups them
    block1 = fuser.block1(torch.cat([x, repeated], 1))
    expected = fuser.block2(block1 + fuser.attention(block1))
    torch.testing.assert_close(fuser(x, f16), expected, atol=1e-10, rtol=1e-10)
    with pytest.raises(ValueError, match="not a multiple of 2 frames"):
        fuser(x[:5], f16)


def test_a_float32_state_continues_under_bfloat16_autocast():
    """The memory bank keeps its dtype: a video started in float32 goes on under bfloat16 autocast
    (found on the GPU: the model benchmark times every precision from one float32 start state)."""
    model = small(clip_length=2)
    torch.manual_seed(2)
    frames = torch.rand(4, 3, 32, 48)
    masks = blob_masks(32, 48, [(16, 24)], radius=6)
    state = model.new_video()
    with torch.inference_mode():
        model.step_clip(state, frames[:2].unsqueeze(0), [masks, None], [[1], []])
        assert state.memory.keys.dtype == torch.float32
        expected = model.step_clip(__import__("copy").deepcopy(state), frames[2:].unsqueeze(0), [None, None],
                                   [[], []])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.step_clip(state, frames[2:].unsqueeze(0), [None, None], [[], []])
    assert state.memory.keys.dtype == torch.float32
    assert out.shape == expected.shape and torch.isfinite(out).all()
    # bfloat16 convolutions (8-bit mantissa) on random weights: probabilities within 0.1
    assert (out.float() - expected).abs().max() < 0.1


def test_shared_parts_of_a_block_with_an_identity_skip():
    """ResBlock(in, in) has no downsample conv (PCVOS with a resnet18 key backbone: issue 17, item
    14): its skip is split by channels, still equal to the block on cat([own, shared])."""
    from vos_models.methods.pcvos.blocks import ResBlock

    torch.manual_seed(3)
    block = ResBlock(24, 24).double()
    assert block.downsample is None
    own = torch.randn(6, 16, 5, 7, dtype=torch.float64)      # 3 objects x 2 frames, object-major
    shared = torch.randn(2, 8, 5, 7, dtype=torch.float64)
    expected = block(torch.cat([own, shared.repeat(3, 1, 1, 1)], 1))
    got = block.forward_shared(own, block.shared_part(shared), frames_first=False)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)


def test_resnet18_key_backbone_runs_at_the_default_dims():
    model = PCVOS(key_backbone="resnet18").eval()
    frames = torch.rand(1, 2, 3, 64, 96)
    masks = blob_masks(64, 96, [(30, 40)], radius=10)
    with torch.inference_mode():
        out = model.step_clip(model.new_video(), frames, [masks, None], [[1], []])
    assert out.shape == (2, 2, 64, 96) and torch.isfinite(out).all()
