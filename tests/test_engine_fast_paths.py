"""The inference engine's fast paths: each one gives the plain path's results (or close), and
bad options or combinations fail with a clear error. GPU-only paths are tested on CPU where
their logic allows (CUDA graphs' bookkeeping with an eager stand-in) and skip otherwise."""
import threading

import numpy as np
import pytest
import torch

from tests.test_engine_inference import Recorder, synthetic_video
from vos_models import build_method
from vos_models.data.errors import DataError
from vos_models.engine.cuda_graphs import GraphedForward, eager_capture, enable_cuda_graphs
from vos_models.engine.inference import InferenceEngine
from vos_models.engine.prefetch import prefetched

torch.set_num_threads(1)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")

# Small configurations of the four methods (random weights; the paths do not depend on them).
SMALL = {
    "rgmp": dict(backbone="resnet18", decoder_channels=16),
    "crvos": dict(backbone="resnet18", s16_width=16, width=16),
    "ttvos": dict(backbone="resnet18"),
    "pcvos": dict(key_backbone="resnet18", key_dim=16, value_dim=32, icr_dim=16, decoder_dim=16, clip_length=3),
}


def run(engine, frames, masks):
    return [r for r in engine.segment(frames, masks)]


def video(size=(48, 64), frames=5):
    clip, frames, names = synthetic_video(entering=0.0, objects=2, size=size, frames=frames)
    return frames, {names[0]: clip.labels[0].numpy().astype(np.uint8)}


def small_method(name):
    torch.manual_seed(0)
    return build_method(name, **SMALL[name])


def probabilities(engine, frames, masks):
    return torch.stack([r.probabilities for r in engine.segment(frames, masks)])


# ---------------------------------------------------------------- options and errors
def test_bad_options_and_combinations_fail_clearly():
    method = build_method("tiny-prop", channels=4)
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device"):
        InferenceEngine(method, cuda_graphs=True)
    with pytest.raises(ValueError, match="uses CUDA graphs and needs a GPU"):
        InferenceEngine(method, compile="reduce-overhead")
    with pytest.raises(ValueError, match="compile must be a bool or one of"):
        InferenceEngine(method, compile="fastest")
    with pytest.raises(ValueError, match="threads must be None or an int >= 1"):
        InferenceEngine(method, threads=0)
    with pytest.raises(ValueError, match="prefetch must be an int >= 0"):
        InferenceEngine(method, prefetch=-1)
    with pytest.raises(ValueError, match="prefetch must be an int >= 0"):
        InferenceEngine(method, prefetch=True)


@needs_cuda
def test_cuda_graphs_and_compile_together_are_refused():
    with pytest.raises(ValueError, match="not both"):
        InferenceEngine(build_method("tiny-prop", channels=4), device="cuda", cuda_graphs=True, compile=True)


def test_threads_are_set_while_segmenting_and_restored():
    seen = []

    class ThreadRecorder(Recorder):
        def step(self, state, frame, new_masks, new_ids):
            seen.append(torch.get_num_threads())
            return super().step(state, frame, new_masks, new_ids)

    frames, masks = video()
    before = torch.get_num_threads()
    target = 2 if before != 2 else 3
    run(InferenceEngine(ThreadRecorder(), threads=target), frames, masks)
    assert seen and set(seen) == {target}
    assert torch.get_num_threads() == before


# ---------------------------------------------------------------- prefetch
def test_prefetch_gives_the_same_results_and_propagates_errors_in_place():
    frames, masks = video(frames=7)
    method = small_method("ttvos")
    plain = probabilities(InferenceEngine(method, keep_probabilities=True), frames, masks)
    ahead = probabilities(InferenceEngine(method, keep_probabilities=True, prefetch=2), frames, masks)
    assert torch.equal(plain, ahead)

    broken = list(frames)
    broken[4] = (broken[4][0], broken[4][1][..., :2])  # a frame with two channels
    engine = InferenceEngine(build_method("tiny-prop", channels=4), prefetch=3)
    got = []
    with pytest.raises(DataError, match=r"frames must be \(H, W, 3\) uint8 RGB"):
        for result in engine.segment(broken, masks):
            got.append(result.name)
    assert got == [name for name, _ in frames[:4]]  # every frame before the bad one came out


def test_prefetch_is_bounded_and_stops_when_the_consumer_leaves():
    produced = []

    def source():
        for i in range(1000):
            produced.append(i)
            yield i

    stream = prefetched(source(), 2, lambda i: i * 10)
    assert [next(stream) for _ in range(3)] == [0, 10, 20]
    stream.close()
    assert len(produced) <= 3 + 2 + 1  # consumed + queue depth + the one being put
    assert not any(t.name == "vos-frame-prefetch" for t in threading.enumerate())
    with pytest.raises(ValueError, match="depth must be an int >= 1"):
        list(prefetched([1], 0, lambda i: i))


# ---------------------------------------------------------------- channels-last, bfloat16
@pytest.mark.parametrize("name", sorted(SMALL))
def test_channels_last_matches_the_plain_path(name):
    frames, masks = video()
    plain = probabilities(InferenceEngine(small_method(name), keep_probabilities=True), frames, masks)
    nhwc = probabilities(InferenceEngine(small_method(name), keep_probabilities=True, channels_last=True),
                         frames, masks)
    assert (plain - nhwc).abs().max() < 1e-3


@pytest.mark.parametrize("name", ["crvos", "ttvos", "pcvos"])
def test_bfloat16_keeps_the_aggregation_in_float32(name):
    frames, masks = video()
    method = small_method(name)
    engine = InferenceEngine(method, precision="bfloat16")
    state = method.new_video()
    frame = engine.prepare_frame(frames[1][1])
    first = torch.from_numpy(masks[frames[0][0]] == 1).float()[None]
    with torch.inference_mode(), engine._autocast():
        if method.clip_wise:
            prob = method.step_clip(state, frame.unsqueeze(1).expand(-1, 3, -1, -1, -1), [first, None, None],
                                    [[1], [], []])
        else:
            method.step(state, frame, first, [1])
            prob = method.step(state, frame, None, [])
    assert prob.dtype == torch.float32
    if name == "ttvos":  # the running template is float32 too (a float32 state continues under bfloat16)
        assert state.template.dtype == torch.float32
    plain = probabilities(InferenceEngine(method, keep_probabilities=True), frames, masks)
    low = probabilities(InferenceEngine(method, keep_probabilities=True, precision="bfloat16"), frames, masks)
    assert torch.allclose(low.sum(1), torch.ones_like(low[:, 0]), atol=1e-4)  # still distributions
    assert (plain - low).abs().max() < 0.1


# ---------------------------------------------------------------- CUDA graphs
def test_graphed_forward_bookkeeping_with_an_eager_stand_in():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    graphed = GraphedForward(conv.forward, capture=eager_capture, max_graphs=2)
    a, b = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    out_a = graphed(a)
    out_b = graphed(b)  # replay: same graph, new inputs copied in
    assert graphed.captures == 1
    assert torch.allclose(out_a, conv(a)) and torch.allclose(out_b, conv(b))
    assert torch.allclose(out_a, conv(a))  # the first output was cloned out, not overwritten
    graphed(torch.randn(2, 3, 8, 8))
    assert graphed.captures == 2
    with pytest.raises(RuntimeError, match="more than 2 input shapes"):
        graphed(torch.randn(3, 3, 8, 8))


def test_cuda_graph_modules_of_the_methods_give_the_same_results_with_the_stand_in():
    frames, masks = video()
    for name in ("crvos", "ttvos", "pcvos"):  # pcvos names methods of a submodule (decoder.shared, ...)
        plain = probabilities(InferenceEngine(small_method(name), keep_probabilities=True), frames, masks)
        method = small_method(name)
        assert enable_cuda_graphs(method, capture=eager_capture) == list(method.cuda_graph_modules)
        graphed = probabilities(InferenceEngine(method, keep_probabilities=True), frames, masks)
        assert torch.allclose(plain, graphed, atol=1e-5), name
    with pytest.raises(ValueError, match="declares no fixed-shape submodules"):
        enable_cuda_graphs(build_method("tiny-prop", channels=4), capture=eager_capture)
    method = small_method("pcvos")
    method.cuda_graph_modules = ("network.decoder.no_such_method",)
    with pytest.raises(ValueError, match="neither a submodule nor a method"):
        enable_cuda_graphs(method, capture=eager_capture)


@needs_cuda
@pytest.mark.parametrize("name", sorted(SMALL))
def test_cuda_graphs_and_prefetch_upload_match_eager_on_gpu(name):
    frames, masks = video()
    plain = probabilities(InferenceEngine(small_method(name), device="cuda", keep_probabilities=True), frames, masks)
    fast = probabilities(InferenceEngine(small_method(name), device="cuda", keep_probabilities=True,
                                         cuda_graphs=True, prefetch=2, channels_last=True), frames, masks)
    assert (plain - fast).abs().max() < 1e-3


def test_pcvos_objects_decoded_as_one_batch_give_the_same_outputs():
    frames, masks = video(frames=5)
    outs = {}
    for batched in (False, True):
        torch.manual_seed(0)
        method = build_method("pcvos", batch_objects=batched, **SMALL["pcvos"])
        outs[batched] = probabilities(InferenceEngine(method, keep_probabilities=True), frames, masks)
    assert outs[True].shape[1] == 3  # background + 2 objects: the batched path ran
    assert torch.allclose(outs[True], outs[False], atol=1e-5)


def video_folder(tmp_path, frames: int):
    """A synthetic video as a folder of PNG frames and its first-frame mask file: (folder, mask)."""
    from PIL import Image

    from vos_models.data import write_mask

    frames, masks = video(frames=frames)
    folder = tmp_path / "frames"
    folder.mkdir()
    for name, rgb in frames:
        Image.fromarray(rgb).save(folder / f"{name}.png")
    return folder, write_mask(tmp_path / "first.png", masks[frames[0][0]])


def test_vos_segment_fast_path_flags(tmp_path, capsys):
    from vos_models.cli import segment as segment_cli
    from vos_models.cli.common import run_main

    folder, mask = video_folder(tmp_path, frames=4)
    base = ["--input", str(folder), "--mask", str(mask), "--method", "tiny-prop", "--set", "channels=4",
            "--no-progress"]
    status = run_main("vos-segment", segment_cli.main, base + ["--output", str(tmp_path / "out"), "--threads", "1",
                                                               "--prefetch", "3", "--channels-last"])
    assert status == 0 and len(list((tmp_path / "out" / "frames").glob("*.png"))) == 4
    status = run_main("vos-segment", segment_cli.main, base + ["--output", str(tmp_path / "bad"), "--cuda-graphs",
                                                               "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and err[-1] == ("vos-segment: error: InferenceEngine: cuda_graphs=True needs a CUDA device, "
                                       "got device 'cpu'")
    assert not (tmp_path / "bad").exists()
