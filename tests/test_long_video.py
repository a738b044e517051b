"""benchmarks/long_video.py: streamed synthetic video, flat memory verdict, atomic outputs."""
import numpy as np
import torch

from benchmarks import long_video
from tests.test_engine_inference import Recorder
from vos_models import build_method

torch.set_num_threads(1)


def test_frames_are_streamed_and_the_first_labels_match_the_first_frame():
    video, labels = long_video.synthetic_frames(5, 40, 56, objects=2)
    first_name, first = next(video)
    assert first_name == "00000" and first.shape == (40, 56, 3) and first.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 1, 2}
    assert len(list(video)) == 4  # a generator: nothing held beyond the current frame


def test_bounded_methods_are_flat_and_a_hoarding_one_is_caught():
    method = build_method("pcvos", key_backbone="resnet18", key_dim=16, value_dim=32, icr_dim=16, decoder_dim=16,
                          clip_length=2, max_memory_frames=3)
    assert long_video.default_warmup(method, 40) == (3 + 2) * 2
    result = long_video.run_long_video(method, frames=40, height=48, width=64, objects=2, sample_every=5,
                                       tolerance_mb=16)
    assert result.flat, result.growth_mb
    assert [s["frame"] for s in result.samples][-1] == 40 and result.growth_mb

    class Hoarder(Recorder):  # keeps 2 MB per frame: unbounded
        def step(self, state, frame, new_masks, new_ids):
            state.__dict__.setdefault("junk", []).append(torch.ones(2 ** 19))
            return super().step(state, frame, new_masks, new_ids)

    grown = long_video.run_long_video(Hoarder(), frames=40, height=32, width=32, sample_every=5, warmup=5,
                                      tolerance_mb=16)
    assert not grown.flat and grown.growth_mb["rss_mb"] > 16


def test_command_line_writes_csv_and_chart_and_reports(tmp_path, capsys):
    status = long_video.main(["--method", "ttvos", "--frames", "12", "--height", "48", "--width", "64",
                              "--sample-every", "3", "--warmup", "3", "--tolerance-mb", "64", "--output",
                              str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    assert status == 0 and "ttvos: flat after frame 3" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long_video_ttvos_48p.csv", "long_video_ttvos_48p.png"]
    rows = (tmp_path / "long_video_ttvos_48p.csv").read_text().splitlines()
    assert rows[0].startswith("frame,seconds,s_per_frame,rss_mb") and len(rows) == 1 + 4
    assert long_video.main(["--method", "ttvos", "--frames", "5", "--warmup", "5", "--output", str(tmp_path)]) == 1
    assert "warm-up must be in [0, frames=5)" in capsys.readouterr().err
