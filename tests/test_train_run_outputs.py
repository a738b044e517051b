"""What a vos-train run folder shows (issue 18, item 6): every default in --help, metrics.csv,
loss.png, best.pt from validation J&F, a progress bar with ETA. Tiny synthetic runs, in-process."""
from __future__ import annotations

import argparse
import csv

import pytest
import torch

from vos_models.cli import train as train_cli
from vos_models.cli.common import add_method_specific_arguments, run_main
from vos_models.registry import load_checkpoint
from vos_models.training.run_log import COLUMNS, RunLog

TINY = ["--method", "tiny-prop", "--set", "channels=4", "--size", "24", "24", "--batch-size", "1",
        "--synthetic-length", "4", "--num-frames", "2", "--device", "cpu", "--seed", "3"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def train(argv, capsys) -> tuple[int, str, str]:
    status = run_main("vos-train", train_cli.main, [str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_help_shows_every_default(capsys):
    parser = train_cli.build_parser()
    add_method_specific_arguments(parser, ["--method", "tiny-prop"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or action.default in (None, False, argparse.SUPPRESS):
            continue  # no value to show (flags off by default, options without a default)
        shown = " ".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else action.default
        default = f"(default: {action.default})"
        assert default in text or f"(default: {shown})" in text, (action.option_strings, default)


def test_run_folder_holds_metrics_csv_and_loss_png(tmp_path, capsys):
    run = tmp_path / "run"
    status, _, err = train([*TINY, "--output", run, "--steps", "6", "--log-every", "2", "--plot-every", "2",
                            "--val", "none"], capsys)
    assert status == 0, err
    with open(run / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == COLUMNS
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    assert all(float(r["loss"]) > 0 and float(r["lr"]) == pytest.approx(1e-4) for r in rows)
    seconds = [float(r["seconds"]) for r in rows]
    assert seconds == sorted(seconds) and seconds[0] >= 0
    assert (run / "loss.png").read_bytes().startswith(PNG_SIGNATURE)
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")]
    # tqdm's bar on stderr: steps done of the total, and the remaining time (ETA) after '<'
    assert "6/6" in err and "<" in err


def test_a_resumed_run_drops_the_rows_after_its_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    common = [*TINY, "--output", run, "--steps", "4", "--log-every", "1", "--checkpoint-every", "2", "--val", "none",
              "--no-progress"]
    assert train([*common, "--max-steps-this-run", "2"], capsys)[0] == 0
    # as a run killed after step 3 leaves it: a row logged after the last checkpoint (step 2)
    with open(run / "metrics.csv", "a") as handle:
        handle.write("3,9.0,0.0001,1.0\n")
    assert train([*common, "--resume"], capsys)[0] == 0
    steps = [r["step"] for r in RunLog(run).rows()]
    assert steps == [1, 2, 3, 4]
    assert RunLog(run).rows()[2]["loss"] != 9.0


def test_validation_keeps_the_best_weights_in_best_pt(tmp_path, capsys):
    run = tmp_path / "run"
    status, out, err = train([*TINY, "--output", run, "--steps", "4", "--val-data", "synthetic", "--val-every", "2",
                              "--no-progress"], capsys)
    assert status == 0, err
    last, best = load_checkpoint(run / "last.pt"), load_checkpoint(run / "best.pt")
    assert best["method"] == last["method"] == "tiny-prop"
    assert best["step"] in (2, 4)
    assert 0.0 <= best["val_scores"]["J&F-Mean"] <= 1.0
    assert last["best_score"] == best["val_scores"]["J&F-Mean"]  # carried over a resume
    if best["step"] == 4:  # the last validation was the best: best.pt holds last.pt's weights
        for key, value in last["state_dict"].items():
            assert torch.equal(value, best["state_dict"][key]), key


def test_best_pt_is_replaced_only_by_a_better_score(tmp_path):
    from vos_models.registry import build_method
    from vos_models.training.trainer import Trainer, TrainConfig
    from vos_models.data.datasets import SyntheticClipDataset

    scores = iter([0.5, 0.3, 0.7])
    method = build_method("tiny-prop", channels=4)
    dataset = SyntheticClipDataset(2, size=(24, 24), num_frames=2, max_objects=2, seed=0)
    config = TrainConfig(output=str(tmp_path), steps=3, batch_size=1, val_every=1, device="cpu", progress=False)
    best_step_after = []
    trainer = Trainer(method, dataset, config, validation=lambda m: {"J&F-Mean": next(scores)},
                      callbacks=[lambda t, step: best_step_after.append(load_checkpoint(t.best_path)["step"])])
    trainer.fit()
    assert best_step_after == [1, 1, 3]  # 0.3 at step 2 did not replace the 0.5 of step 1
    assert trainer.best_score == 0.7


def test_unknown_validation_root_is_refused_before_anything_is_written(tmp_path, capsys):
    run = tmp_path / "run"
    status, _, err = train([*TINY, "--output", run, "--steps", "2", "--val-data", tmp_path / "nowhere",
                            "--val-every", "1"], capsys)
    lines = err.strip().splitlines()
    assert status == 1 and len(lines) == 1 and "--val-data" in lines[0] and "Traceback" not in err
    assert not run.exists()


def test_without_matplotlib_the_csv_is_written_and_the_missing_plot_said_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # import matplotlib -> ImportError
    log = RunLog(tmp_path, plot_every=1)
    log.append(1, 0.5, 1e-4, 0.1)
    log.append(2, 0.25, 1e-4, 0.2)
    assert [r["loss"] for r in log.rows()] == [0.5, 0.25]
    assert not (tmp_path / "loss.png").exists()
    err = capsys.readouterr().err
    assert err.count("loss.png not drawn: matplotlib is not installed") == 1
