"""Bad input on the command lines (issue 17): exit status != 0, one to three lines on stderr that
name what is wrong, no traceback, and nothing created or lost."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image

from vos_models.atomic import atomic_path
from vos_models.cli import evaluate as evaluate_cli
from vos_models.cli import segment as segment_cli
from vos_models.cli import train as train_cli
from vos_models.cli.common import run_main

TRAIN = ["--method", "tiny-prop", "--set", "channels=4", "--steps", "1", "--size", "24", "24", "--batch-size", "1",
         "--synthetic-length", "2", "--num-frames", "2", "--val", "none", "--no-progress", "--device", "cpu"]


def run(prog, main, argv, capsys) -> tuple[int, list[str]]:
    """Exit status and stderr lines of one CLI call (argparse's exits included)."""
    try:
        status = run_main(prog, main, [str(a) for a in argv])
    except SystemExit as exc:
        status = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 3, lines
    return status, lines


@pytest.mark.parametrize("option, value, expected", [
    ("--grad-clip", "-1", "argument --grad-clip: expected a number in (0, inf), got -1"),
    ("--gamma", "0", "argument --gamma: expected a number in (0, inf), got 0"),
    ("--gamma", "-1", "argument --gamma: expected a number in (0, inf), got -1"),
    ("--log-every", "0", "argument --log-every: expected an integer >= 1, got 0"),
    ("--num-frames", "1", "argument --num-frames: expected an integer >= 2, got 1"),
    ("--lr", "nan", "argument --lr: expected a number in (0, inf), got nan"),
    ("--hflip", "1.5", "argument --hflip: expected a number in [0, 1], got 1.5"),
    ("--steps", "ten", "argument --steps: expected an integer >= 1, got 'ten'"),
])
def test_train_refuses_invalid_numbers(tmp_path, capsys, option, value, expected):
    status, lines = run("vos-train", train_cli.main, [*TRAIN, "--output", tmp_path / "run", option, value], capsys)
    assert status == 2 and expected in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra, expected", [
    (["--device", "tpu"], "--device tpu: expected cpu, cuda, cuda:N or auto"),
    (["--set", "nosuch=3"], "has no config key 'nosuch'"),
    (["--amp", "float16"], "amp float16 needs a GPU"),
])
def test_train_refuses_bad_settings_and_leaves_no_run_folder(tmp_path, capsys, extra, expected):
    status, lines = run("vos-train", train_cli.main, [*TRAIN, "--output", tmp_path / "run", *extra], capsys)
    assert status == 1 and expected in lines[0]
    assert not (tmp_path / "run").exists()


def _garbage(tmp_path, kind: str):
    path = tmp_path / f"{kind}.pt"
    if kind == "garbage":
        path.write_bytes(b"this is not a checkpoint")
    else:  # truncated
        torch.save({"w": torch.zeros(100)}, path)
        path.write_bytes(path.read_bytes()[:150])
    return path


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_unreadable_weight_files_are_named_and_never_unpickled(tmp_path, capsys, kind):
    bad = _garbage(tmp_path, kind)
    status, lines = run("vos-train", train_cli.main, [*TRAIN, "--output", tmp_path / "run", "--init-checkpoint", bad],
                        capsys)
    assert status == 1 and str(bad) in lines[0] and "weights_only=False" not in " ".join(lines)
    assert not (tmp_path / "run").exists()
    frames, mask = _video(tmp_path)
    for option in ("--checkpoint", "--public-checkpoint"):
        status, lines = run("vos-segment", segment_cli.main,
                            ["--input", frames, "--mask", mask, "--output", tmp_path / "out", "--method", "crvos",
                             option, bad, "--no-progress"], capsys)
        assert status == 1 and str(bad) in lines[0] and "weights_only" not in " ".join(lines)
        assert not (tmp_path / "out").exists()


def test_evaluate_refuses_a_negative_boundary_threshold(tmp_path, capsys):
    status, lines = run("vos-evaluate", evaluate_cli.main, ["--gt", tmp_path, "--pred", tmp_path, "--bound-th", "-1"],
                        capsys)
    assert status == 2 and "argument --bound-th: expected a number in (0, inf), got -1" in lines[0]


def _palette_png(path, labels: np.ndarray):
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9))
    image.save(path)
    return path


def _video(tmp_path, frames: int = 3, size=(32, 48)):
    folder = tmp_path / "frames"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(frames):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"{i:05d}.jpg")
    labels = np.zeros(size, np.uint8)
    labels[8:20, 10:30] = 1
    return folder, _palette_png(tmp_path / "first.png", labels)


@pytest.mark.parametrize("fill, expected", [(0, "has no object"), (255, "has no object")])
def test_segment_refuses_a_first_mask_without_objects(tmp_path, capsys, fill, expected):
    frames, _ = _video(tmp_path)
    mask = _palette_png(tmp_path / "empty.png", np.full((32, 48), fill, np.uint8))
    status, lines = run("vos-segment", segment_cli.main, ["--input", frames, "--mask", mask, "--output",
                                                          tmp_path / "out", "--method", "copy-previous",
                                                          "--no-progress"], capsys)
    assert status == 1 and expected in lines[0] and str(mask) in lines[0]
    assert not (tmp_path / "out").exists()


def test_segment_refuses_a_mask_of_another_size(tmp_path, capsys):
    frames, _ = _video(tmp_path)
    mask = _palette_png(tmp_path / "small.png", np.ones((16, 48), np.uint8))
    status, lines = run("vos-segment", segment_cli.main, ["--input", frames, "--mask", mask, "--output",
                                                          tmp_path / "out", "--method", "copy-previous",
                                                          "--no-progress"], capsys)
    assert status == 1 and "is 48x16 (WxH) but the frames are 48x32" in lines[0]


def test_segment_cleans_what_a_killed_run_left_and_follows_the_umask(tmp_path, capsys):
    frames, mask = _video(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    dead = 2 ** 22 + 12345   # above the default pid_max of 2^22: no process has it
    (out / f".frames.partial-{dead}-abcd").mkdir()
    (out / f".frames.old-{dead}-abcd").mkdir()
    alive = out / f".frames.partial-{os.getpid()}-mine"   # a live process's: kept
    alive.mkdir()
    previous = os.umask(0o022)
    try:
        assert run_main("vos-segment", segment_cli.main, [str(a) for a in ["--input", frames, "--mask", mask,
                        "--output", out, "--method", "copy-previous", "--no-progress"]]) == 0
    finally:
        os.umask(previous)
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == sorted([alive.name, "frames"])
    assert stat.S_IMODE((out / "frames").stat().st_mode) == 0o755


def test_atomic_writes_remove_temporaries_of_killed_writers_only(tmp_path):
    target = tmp_path / "last.pt"
    dead = 2 ** 22 + 54321
    stale = tmp_path / f".last.pt.{dead}.x1y2.tmp"
    stale.write_bytes(b"half a checkpoint")
    live = tmp_path / f".last.pt.{os.getpid()}.keep.tmp"
    live.write_bytes(b"being written")
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and not stale.exists() and live.exists()


@pytest.mark.parametrize("case, expected", [
    ("missing input", "input not found"),
    ("output is a file", "exists and is not a folder"),
    ("zero frames", "no image frames"),
    ("truncated frame", "corrupt or unreadable frame"),
    ("missing mask", "mask not found"),
])
def test_segment_refuses_bad_files_and_writes_nothing(tmp_path, capsys, case, expected):
    frames, mask = _video(tmp_path)
    out = tmp_path / "out"
    if case == "missing input":
        frames = tmp_path / "no-such-folder"
    elif case == "output is a file":
        out.write_text("a user's file")
    elif case == "zero frames":
        frames = tmp_path / "empty"
        frames.mkdir()
    elif case == "truncated frame":
        jpeg = sorted(frames.iterdir())[1]
        jpeg.write_bytes(jpeg.read_bytes()[:200])
    elif case == "missing mask":
        mask = tmp_path / "no-such-mask.png"
    status, lines = run("vos-segment", segment_cli.main, ["--input", frames, "--mask", mask, "--output", out,
                                                          "--method", "copy-previous", "--no-progress"], capsys)
    assert status == 1 and expected in lines[0]
    if case == "output is a file":
        assert out.read_text() == "a user's file"     # never lost
    else:
        assert not out.exists()


def test_a_full_disk_during_segment_is_an_error_and_leaves_no_partial_results(tmp_path, capsys, monkeypatch):
    import errno

    frames, mask = _video(tmp_path)
    calls = {"n": 0}
    real = segment_cli.write_mask

    def fill_up(path, labels):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, labels)

    monkeypatch.setattr(segment_cli, "write_mask", fill_up)
    status, lines = run("vos-segment", segment_cli.main, ["--input", frames, "--mask", mask, "--output",
                                                          tmp_path / "out", "--method", "copy-previous",
                                                          "--no-progress"], capsys)
    assert status == 1 and "cannot write results to" in lines[0] and "No space left on device" in lines[0]
    assert not (tmp_path / "out").exists()


def test_ctrl_c_during_segment_exits_130_and_keeps_earlier_results(tmp_path, capsys, monkeypatch):
    frames, mask = _video(tmp_path)
    out = tmp_path / "out"
    assert run_main("vos-segment", segment_cli.main, [str(a) for a in ["--input", frames, "--mask", mask, "--output",
                    out, "--method", "copy-previous", "--no-progress", "--name", "first"]]) == 0
    capsys.readouterr()

    def interrupted(path, labels):
        raise KeyboardInterrupt

    monkeypatch.setattr(segment_cli, "write_mask", interrupted)
    status, lines = run("vos-segment", segment_cli.main, ["--input", frames, "--mask", mask, "--output", out,
                                                          "--method", "copy-previous", "--no-progress", "--name",
                                                          "second"], capsys)
    assert status == 130 and lines == ["vos-segment: interrupted"]
    assert sorted(p.name for p in out.iterdir()) == ["first"]          # nothing half-written, nothing lost


def test_a_full_disk_while_saving_a_checkpoint_is_an_error_that_keeps_the_old_one(tmp_path, monkeypatch):
    import errno

    from vos_models import registry
    from vos_models.errors import CheckpointError

    target = tmp_path / "last.pt"
    registry.atomic_torch_save({"step": 1}, target)

    def no_space(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(registry.torch, "save", no_space)
    with pytest.raises(CheckpointError, match=r"cannot write .*last.pt: No space left on device"):
        registry.atomic_torch_save({"step": 2}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]       # no temporary left


def test_ctrl_c_during_train_exits_130_and_the_run_resumes(tmp_path, capsys):
    def interrupt_after_step_2(trainer, step):
        if step == 2:
            raise KeyboardInterrupt

    argv = [str(a) for a in [*TRAIN, "--output", tmp_path / "run", "--checkpoint-every", "1"]]
    argv[argv.index("--steps") + 1] = "4"
    status = run_main("vos-train", lambda a: train_cli.main(a, callbacks=[interrupt_after_step_2]), argv)
    err = capsys.readouterr().err
    assert status == 130 and "vos-train: interrupted" in err and "Traceback" not in err
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]
    assert run_main("vos-train", train_cli.main, [*argv, "--resume"]) == 0
    assert "done at step 4/4" in capsys.readouterr().out


def test_segment_reads_a_grayscale_0_255_mask_as_one_object(tmp_path, capsys):
    frames, _ = _video(tmp_path)
    binary = np.zeros((32, 48), np.uint8)
    binary[8:20, 10:30] = 255
    Image.fromarray(binary, mode="L").save(tmp_path / "binary.png")
    assert run_main("vos-segment", segment_cli.main, [str(a) for a in ["--input", frames, "--mask",
                    tmp_path / "binary.png", "--output", tmp_path / "out", "--method", "copy-previous",
                    "--no-progress"]]) == 0
    assert "3 frames, 1 object(s)" in capsys.readouterr().out


def test_evaluate_scores_a_partial_run_and_says_what_it_found(tmp_path, capsys):
    gt = tmp_path / "gt"
    for seq in ("alpha", "beta", "gamma"):
        (gt / seq).mkdir(parents=True)
        labels = np.zeros((16, 16), np.uint8)
        labels[4:10, 4:10] = 1
        for frame in ("00000", "00001"):
            _palette_png(gt / seq / f"{frame}.png", labels)
    pred = tmp_path / "pred"
    for seq in ("alpha", "extra"):
        (pred / seq).mkdir(parents=True)
        for frame in ("00000", "00001"):
            _palette_png(pred / seq / f"{frame}.png", np.zeros((16, 16), np.uint8))
    assert run_main("vos-evaluate", evaluate_cli.main, ["--gt", str(gt), "--pred", str(pred), "--no-write",
                                                        "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "scoring 1 sequence(s)" in out and "alpha_1" in out
    assert "2 ground-truth sequence(s) have no predictions: beta, gamma" in out
    assert "ignored 1 prediction folder(s) without ground truth: extra" in out
    status, lines = run("vos-evaluate", evaluate_cli.main, ["--gt", gt, "--pred", pred, "--no-write", "--strict"],
                        capsys)
    assert status == 1 and "--strict: 2 ground-truth sequence(s) have no predictions" in lines[-1]


@pytest.mark.parametrize("option, case, expected", [
    ("--gt", "missing", "argument --gt: folder not found"),
    ("--pred", "missing", "argument --pred: folder not found"),
    ("--pred", "file", "is a file, expected a folder"),
])
def test_evaluate_refuses_missing_or_file_folders_and_writes_nothing(tmp_path, capsys, option, case, expected):
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    (tmp_path / "afile").write_text("x")
    paths = {"--gt": tmp_path / "gt", "--pred": tmp_path / "pred"}
    paths[option] = tmp_path / ("nowhere" if case == "missing" else "afile")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    status, lines = run("vos-evaluate", evaluate_cli.main, ["--gt", paths["--gt"], "--pred", paths["--pred"]], capsys)
    assert status == 2 and expected in lines[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("extra, expected", [
    (["--val-every", "1", "--val-data", "{empty}"], "--val-data {empty}: {empty} is not in the DAVIS layout"),
    (["--val-every", "1", "--val-data", "{nowhere}"], "--val-data {nowhere}: not 'synthetic', 'none' or a dataset"),
    (["--val-data", "{davis}"], "--val-data {davis} is used only with --val-every N"),
    (["--val-every", "1", "--val-data", "{davis}", "--val-sequences", "b"], "--val-sequences: b not in {davis}"),
])
def test_train_refuses_bad_validation_data_before_creating_the_run_folder(tmp_path, capsys, extra, expected):
    places = {"empty": tmp_path / "empty", "nowhere": tmp_path / "nowhere", "davis": tmp_path / "davis"}
    places["empty"].mkdir()
    (places["davis"] / "JPEGImages" / "480p" / "a").mkdir(parents=True)
    (places["davis"] / "Annotations" / "480p" / "a").mkdir(parents=True)
    extra = [e.format(**places) for e in extra]
    status, lines = run("vos-train", train_cli.main, [*TRAIN, "--output", tmp_path / "run", *extra], capsys)
    assert status == 1 and expected.format(**places) in lines[0]
    assert not (tmp_path / "run").exists()
