"""vos-segment and vos-evaluate end to end on the DAVIS sample, and their handling of bad input."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO_ROOT, require_shared
from vos_models import build_method, save_checkpoint
from vos_models.cli import evaluate as evaluate_cli
from vos_models.cli import segment as segment_cli
from vos_models.cli.common import run_main
from vos_models.data import VideoWriter, read_image, read_mask, write_mask
from vos_models.metrics import evaluate_folders


def segment(argv):
    return run_main("vos-segment", segment_cli.main, [str(a) for a in argv] + ["--no-progress"])


def files_under(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


@pytest.fixture(scope="module")
def davis():
    return require_shared("data", "davis-sample")


@pytest.fixture(scope="module")
def blackswan_video(davis, tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "blackswan.mp4"
    frames = sorted((davis / "JPEGImages" / "480p" / "blackswan").glob("*.jpg"))
    writer = VideoWriter(path, 24, (480, 854))
    for frame in frames:
        writer.write(read_image(frame))
    writer.close()
    return path


def test_segment_blackswan_from_frames_and_video_then_evaluate(davis, blackswan_video, tmp_path, capsys):
    first_mask = davis / "Annotations" / "480p" / "blackswan" / "00000.png"
    out = tmp_path / "results"
    rc = segment(["--input", davis / "JPEGImages" / "480p" / "blackswan", "--mask", first_mask, "--output", out,
                  "--method", "copy-previous", "--overlay", tmp_path / "overlay.mp4"])
    assert rc == 0
    report = capsys.readouterr().out
    assert "blackswan: 50 frames, 1 object(s)" in report and "fps" in report
    assert len(list((out / "blackswan").glob("*.png"))) == 50
    assert (tmp_path / "overlay.mp4").stat().st_size > 0
    assert np.array_equal(read_mask(out / "blackswan" / "00031.png"), read_mask(first_mask))

    video_out = tmp_path / "video_results"
    rc = segment(["--input", blackswan_video, "--mask", first_mask, "--output", video_out, "--name", "blackswan",
                  "--method", "copy-previous"])
    assert rc == 0 and len(list((video_out / "blackswan").glob("*.png"))) == 50

    rc = run_main("vos-evaluate", evaluate_cli.main, ["--gt", str(davis), "--pred", str(out), "--no-progress"])
    assert rc == 0
    table = capsys.readouterr().out
    assert "blackswan_1" in table and (out / "jf_results.csv").is_file() and (out / "jf_results.md").is_file()
    rc = run_main("vos-evaluate", evaluate_cli.main, ["--gt", str(davis), "--pred", str(video_out), "--no-progress"])
    assert rc == 0 and (video_out / "jf_results.csv").read_text() == (out / "jf_results.csv").read_text()
    frames_result = evaluate_folders(davis, out).global_scores
    video_result = evaluate_folders(davis, video_out).global_scores
    # copy-previous's output does not depend on the pixels: both inputs score the same
    assert frames_result == video_result
    assert 0.3 < frames_result["J&F-Mean"] < 0.8
    csv_rows = (out / "jf_results.csv").read_text().splitlines()
    assert csv_rows[0].startswith("Sequence,J&F-Mean") and csv_rows[-1].startswith("Global,")
    assert float(csv_rows[-1].split(",")[1]) == pytest.approx(frames_result["J&F-Mean"], abs=1e-5)


def test_segment_a_dataset_with_sparse_multi_object_annotations(davis, tmp_path):
    rc = segment(["--davis", davis, "--sequences", "caps", "--output", tmp_path / "r", "--method", "copy-previous"])
    assert rc == 0
    out = tmp_path / "r" / "caps"
    assert len(list(out.glob("*.png"))) == 87
    assert set(np.unique(read_mask(out / "00032.png"))) == {0, 1}       # object 2 not yet given
    assert set(np.unique(read_mask(out / "00040.png"))) == {0, 1, 2}    # given on 00033
    result = evaluate_folders(davis, tmp_path / "r", ["caps"])
    assert [o.name for o in result.objects] == ["caps_1", "caps_2"]


def small_sequence(davis, tmp_path, count=4):
    folder = tmp_path / "frames"
    folder.mkdir()
    for src in sorted((davis / "JPEGImages" / "480p" / "blackswan").glob("*.jpg"))[:count]:
        shutil.copy(src, folder / src.name)
    return folder


def expect_failure(capsys, argv, pattern, output):
    rc = segment(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 1, err
    assert len(err.splitlines()) == 1 and err.startswith("vos-segment: error: "), err
    assert pattern in err, err
    assert files_under(output) == [], files_under(output)


def test_bad_inputs_fail_cleanly(davis, tmp_path, capsys):
    frames = small_sequence(davis, tmp_path)
    mask = davis / "Annotations" / "480p" / "blackswan" / "00000.png"
    out = tmp_path / "out"
    base = ["--output", out, "--method", "copy-previous"]
    expect_failure(capsys, ["--input", tmp_path / "missing", "--mask", mask, *base], "input not found", out)
    chair_mask = davis / "Annotations" / "480p" / "chair" / "00000.png"
    expect_failure(capsys, ["--input", frames, "--mask", chair_mask, *base], "is 720x480 (WxH) but the frames are 854x480", out)
    rgb = tmp_path / "rgb.png"
    tinted = np.array(Image.open(mask).convert("RGB"))
    tinted[..., 2] |= 7   # colours that are not in the DAVIS palette
    Image.fromarray(tinted).save(rgb)
    expect_failure(capsys, ["--input", frames, "--mask", rgb, *base], "are not DAVIS palette colours", out)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    expect_failure(capsys, ["--input", empty, "--mask", mask, *base], "empty.mp4", out)
    other = save_checkpoint(tmp_path / "tiny.pt", build_method("tiny-prop", channels=4))
    expect_failure(capsys, ["--input", frames, "--mask", mask, "--output", out, "--method", "copy-previous",
                            "--checkpoint", other], "checkpoint of method 'tiny-prop', not 'copy-previous'", out)
    # corrupt JPEG in the middle of the video: fails after some frames were segmented, and
    # leaves no result folder, no temporary folder and no overlay file
    data = (frames / "00002.jpg").read_bytes()
    (frames / "00002.jpg").write_bytes(data[: len(data) // 3])
    out.mkdir()
    expect_failure(capsys, ["--input", frames, "--mask", mask, *base, "--overlay", out / "o.mp4"],
                   "corrupt or unreadable frame", out)


def test_unwritable_output_folder(davis, tmp_path, capsys):
    frames = small_sequence(davis, tmp_path, count=2)
    mask = davis / "Annotations" / "480p" / "blackswan" / "00000.png"
    if os.geteuid() == 0:
        # root writes through permission bits: use a path under a regular file instead
        blocker = tmp_path / "a_file"
        blocker.write_text("x")
        out = blocker / "results"
    else:
        out = tmp_path / "locked"
        out.mkdir()
        out.chmod(0o500)
    rc = segment(["--input", frames, "--mask", mask, "--output", out, "--method", "copy-previous"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "not writable" in err, err


def test_console_entry_point_exit_status_and_single_line(davis, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "vos_models.cli.segment", "--input", str(tmp_path / "nope"),
                           "--mask", "m.png", "--output", str(tmp_path / "o"), "--method", "copy-previous"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"vos-segment: error: input not found: {tmp_path / 'nope'} "
                                                "(expected a folder of frames or a video file)"]
    (tmp_path / "empty_gt").mkdir()  # a missing --gt is argparse's (status 2, test_bad_inputs_cli.py)
    rc = run_main("vos-evaluate", evaluate_cli.main, ["--gt", str(tmp_path / "empty_gt"), "--pred", str(tmp_path)])
    assert rc == 1


def test_method_options_and_set(tmp_path, capsys):
    from vos_models.cli.common import parse_set_options
    assert parse_set_options(["top_k=20", "scale=0.5", "name=abc", "flag=true", "ids=[1, 2]"]) == {
        "top_k": 20, "scale": 0.5, "name": "abc", "flag": True, "ids": [1, 2]}
    (tmp_path / "f").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "f" / "00000.png")
    write_mask(tmp_path / "m.png", np.ones((8, 8), np.uint8))
    rc = segment(["--input", tmp_path / "f", "--mask", tmp_path / "m.png", "--output", tmp_path / "o",
                  "--method", "copy-previous", "--public-checkpoint", tmp_path / "w.pth"])
    assert rc == 1 and "has no public-checkpoint converter" in capsys.readouterr().err
    # method-declared flags (tiny-prop declares --channels): parsed and passed to the factory
    torch_out = tmp_path / "tiny"
    with pytest.warns(UserWarning, match="the weights are random"):  # said, not silent
        rc = segment(["--input", tmp_path / "f", "--mask", tmp_path / "m.png", "--output", torch_out,
                      "--method", "tiny-prop", "--channels", "3", "--set", "stride=1"])
    assert rc == 0 and (torch_out / "f" / "00000.png").is_file()
    from vos_models.cli.common import add_method_specific_arguments, method_config_from_args
    parser = segment_cli.build_parser()
    argv = ["--method", "tiny-prop", "--channels", "3", "--set", "stride=1"]
    add_method_specific_arguments(parser, argv)
    assert method_config_from_args(parser.parse_args(argv)) == {"channels": 3, "stride": 1}
    rc = segment(["--list-methods"])
    assert rc == 0 and "copy-previous" in capsys.readouterr().out
    rc = segment(["--input", tmp_path, "--mask", "x", "--output", tmp_path / "o", "--method", "tiny-prop",
                  "--set", "bad key=1"])
    assert rc == 1 and "--set expects key=value" in capsys.readouterr().err


def test_only_user_errors_become_one_line_messages_and_bugs_keep_their_traceback(tmp_path, capsys):
    from vos_models.errors import DataError, VOSInputError

    def failing(error):
        def main(argv):
            raise error
        return main

    for error in (VOSInputError("--x: expected 1, got 2"), DataError("frame a.jpg is corrupt")):
        assert run_main("vos-segment", failing(error)) == 1
        assert capsys.readouterr().err == f"vos-segment: error: {error}\n"
    for bug in (ValueError("a bug deep inside"), OSError("disk gone"), KeyError("x")):
        with pytest.raises(type(bug)):
            run_main("vos-segment", failing(bug))
    # a config key the method does not take is the user's to fix, and says which
    rc = segment(["--input", tmp_path, "--mask", "x", "--output", tmp_path / "o", "--method", "tiny-prop",
                  "--set", "chanels=3", "--list-methods"])
    assert rc == 0  # --list-methods answers before anything is built
    (tmp_path / "f").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "f" / "00000.png")
    write_mask(tmp_path / "m.png", np.ones((8, 8), np.uint8))
    capsys.readouterr()
    rc = segment(["--input", tmp_path / "f", "--mask", tmp_path / "m.png", "--output", tmp_path / "o",
                  "--method", "tiny-prop", "--set", "chanels=3"])
    err = capsys.readouterr().err
    assert rc == 1 and "method 'tiny-prop' has no config key 'chanels'" in err, err
