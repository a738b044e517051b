"""vos-train: train a method on synthetic clips, your own image + mask pairs, or videos.

Examples::

    # synthetic clips (no download), validation J&F on held-out synthetic videos every 500 steps
    vos-train --method tiny-prop --output runs/tiny --steps 2000 --size 128 128 --val-every 500
    # DAVIS-layout videos, cosine schedule, 4 GPUs
    torchrun --nproc_per_node 4 -m vos_models.cli.train --method rgmp --data DAVIS --num-frames 4 \\
        --size 384 384 --lr 1e-5 --schedule cosine --steps 100000 --amp bfloat16 --output runs/rgmp
    # after a kill / pre-emption: the same command with --resume continues exactly
    vos-train --method tiny-prop --output runs/tiny --steps 2000 --resume
    # CRVOS fine-tuning (paper §2.5): flip, rotation, shear, scale; lr x 0.995 every epoch
    vos-train --method crvos --data DAVIS --sequences <train list> --num-frames 16 --size 480 864 \\
        --hflip 0.5 --rotate 30 --shear 30 --scale 0.75 1.25 --lr 1e-4 --schedule exponential \\
        --gamma 0.995 --init-checkpoint runs/crvos_pretrain/last.pt --output runs/crvos_finetune

Writes ``<output>/last.pt`` (our checkpoint format: usable by ``vos-segment --checkpoint``),
``<output>/config.json``, ``<output>/log.jsonl``, ``<output>/metrics.csv`` (step, loss, lr, seconds)
and ``<output>/loss.png``; with ``--val-every N`` also ``<output>/best.pt``, the weights of the
validation with the best J&F (``--val-data``: synthetic videos or a DAVIS-layout root).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Sequence

from ..data.augment import AugmentedClipDataset, ClipAugmentation
from ..data.datasets import StaticImageClipDataset, SyntheticClipDataset, VideoClipDataset
from ..data.davis import DavisLayout
from .arguments import (Parser, int_at_least, non_negative_float, non_negative_int, positive_float, positive_int,
                        probability)
from ..errors import VOSInputError
from ..registry import load_checkpoint
from ..training.trainer import SCHEDULES, TrainConfig, Trainer, seed_everything
from ..training.validation import davis_validation_videos, synthetic_validation_videos, validate
from .common import (add_model_arguments, build_model_from_args, method_config_from_args, parse_command_line,
                     pick_device, run_main)

PROG = "vos-train"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Train a VOS method (resumable; DDP under torchrun).")
    parser.add_argument("--output", type=Path, help="run folder (checkpoints, logs)")
    data = parser.add_argument_group("data")
    data.add_argument("--data", default="synthetic",
                      help="'synthetic', 'static' (with --images/--masks) or the root of a DAVIS-layout "
                           "(JPEGImages/480p/<video>) or YouTube-VOS-layout (JPEGImages/<video>) dataset")
    data.add_argument("--images", type=Path, help="with --data static: folder of images")
    data.add_argument("--masks", type=Path, help="with --data static: folder of <image name>.png id masks")
    data.add_argument("--sequences", help="with a dataset root: comma-separated training sequences (default: all)")
    data.add_argument("--num-frames", type=int_at_least(2), default=3, help="frames per training clip (BPTT length)")
    data.add_argument("--size", type=positive_int, nargs=2, default=(64, 64), metavar=("H", "W"), help="clip size")
    data.add_argument("--max-objects", type=positive_int, default=2, help="objects per clip (padding beyond)")
    data.add_argument("--max-skip", type=positive_int, default=5, help="with videos: largest frame gap in a clip")
    data.add_argument("--synthetic-length", type=positive_int, default=1000, help="synthetic clips per epoch")
    data.add_argument("--num-workers", type=non_negative_int, default=0, help="DataLoader worker processes")
    augment = parser.add_argument_group(
        "augmentation", "one random affine transform per clip, the same for all its frames (frames bilinear, "
                        "masks nearest); off by default. CRVOS fine-tuning: --hflip 0.5 --rotate 30 --shear 30 "
                        "--scale 0.75 1.25")
    augment.add_argument("--hflip", type=probability, default=0.0, metavar="P", help="probability of a horizontal flip")
    augment.add_argument("--rotate", type=non_negative_float, default=0.0, metavar="DEG", help="rotation uniform in +-DEG")
    augment.add_argument("--shear", type=non_negative_float, default=0.0, metavar="DEG", help="x-shear uniform in +-DEG")
    augment.add_argument("--scale", type=positive_float, nargs=2, default=(1.0, 1.0), metavar=("MIN", "MAX"),
                         help="isotropic scale uniform in [MIN, MAX]")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--steps", type=positive_int, default=1000, help="total optimizer steps")
    optim.add_argument("--batch-size", type=positive_int, default=2, help="clips per step per process")
    optim.add_argument("--lr", type=positive_float, default=1e-4)
    optim.add_argument("--weight-decay", type=non_negative_float, default=0.0)
    optim.add_argument("--schedule", choices=SCHEDULES, default="constant")
    optim.add_argument("--warmup-steps", type=non_negative_int, default=0)
    optim.add_argument("--milestones", type=positive_int, nargs="*", default=(), help="with --schedule step")
    optim.add_argument("--gamma", type=positive_float, default=0.1, help="with --schedule step or exponential")
    optim.add_argument("--decay-every", type=non_negative_int, default=0,
                       help="with --schedule exponential: steps between two x gamma (0: once per epoch)")
    optim.add_argument("--grad-clip", type=positive_float, default=None)
    optim.add_argument("--amp", choices=("none", "float16", "bfloat16"), default="none")
    run = parser.add_argument_group("run")
    run.add_argument("--checkpoint-every", type=positive_int, default=100)
    run.add_argument("--val-data", "--val", dest="val", default="synthetic", metavar="ROOT",
                     help="validation videos: 'synthetic', 'none' or a DAVIS-layout root; the best J&F's weights "
                          "are kept in <output>/best.pt")
    run.add_argument("--val-sequences", help="with a DAVIS root: comma-separated sequences")
    run.add_argument("--val-every", type=non_negative_int, default=0, help="steps between validations (0: never)")
    run.add_argument("--log-every", type=positive_int, default=10,
                     help="steps between two rows of <output>/log.jsonl and <output>/metrics.csv")
    run.add_argument("--plot-every", type=positive_int, default=10,
                     help="redraw <output>/loss.png every this many logged rows")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    run.add_argument("--ddp-find-unused", action="store_true",
                     help="DDP: the method has parameters that get no gradient (e.g. an unused fc)")
    run.add_argument("--resume", action="store_true", help="continue from <output>/last.pt if present")
    run.add_argument("--init-checkpoint", type=Path,
                     help="start from the weights of one of our checkpoints (not its training state)")
    run.add_argument("--max-steps-this-run", type=positive_int, default=None,
                     help="stop (with a checkpoint) after this many steps; --resume continues later")
    run.add_argument("--no-progress", action="store_true")
    add_model_arguments(parser)
    return parser


def build_augmentation(args) -> ClipAugmentation:
    try:
        return ClipAugmentation(hflip=args.hflip, rotate_deg=args.rotate, shear_deg=args.shear, scale=tuple(args.scale))
    except ValueError as exc:  # name the flags, not the dataclass fields
        raise VOSInputError(f"augmentation flags (--hflip/--rotate/--shear/--scale): {exc}") from exc


def build_dataset(args):
    common = dict(num_frames=args.num_frames, max_objects=args.max_objects, seed=args.seed)
    if args.data == "synthetic":
        dataset = SyntheticClipDataset(args.synthetic_length, size=tuple(args.size), **common)
    elif args.data == "static":
        if args.images is None or args.masks is None:
            raise VOSInputError("--data static needs --images and --masks")
        dataset = StaticImageClipDataset(args.images, args.masks, size=tuple(args.size), **common)
    else:
        root = Path(args.data)
        if not root.is_dir():
            raise VOSInputError(f"--data {args.data}: not 'synthetic', 'static' or a dataset folder")
        sequences = args.sequences.split(",") if args.sequences else None
        dataset = VideoClipDataset(root, sequences, size=tuple(args.size), max_skip=args.max_skip, **common)
    augmentation = build_augmentation(args)
    return dataset if augmentation.is_identity else AugmentedClipDataset(dataset, augmentation, seed=args.seed)


def build_validation(args):
    """The validation function, or None; a bad --val-data is refused here, before the run folder exists."""
    if args.val not in ("synthetic", "none") and not args.val_every:
        raise VOSInputError(f"--val-data {args.val} is used only with --val-every N (steps between validations)")
    if not args.val_every or args.val == "none":
        return None
    if args.val == "synthetic":
        videos = synthetic_validation_videos(4, size=tuple(args.size), num_frames=8, max_objects=args.max_objects)

        def run(method):
            return validate(method, videos, device=next(method.parameters()).device).global_scores
        return run
    root = Path(args.val)
    if not root.is_dir():
        raise VOSInputError(f"--val-data {args.val}: not 'synthetic', 'none' or a dataset folder")
    sequences = args.val_sequences.split(",") if args.val_sequences else None
    try:
        known = DavisLayout(root).sequences()
    except VOSInputError as exc:
        raise VOSInputError(f"--val-data {args.val}: {exc}") from exc
    unknown = sorted(set(sequences or ()) - set(known))
    if unknown:
        raise VOSInputError(f"--val-sequences: {', '.join(unknown[:5])} not in {root} (it has {len(known)} sequences)")

    def run_davis(method):
        videos = davis_validation_videos(str(root), sequences)
        return validate(method, videos, device=next(method.parameters()).device).global_scores
    return run_davis


def main(argv: Sequence[str] | None = None, callbacks=None) -> int:
    args = parse_command_line(build_parser(), argv)
    if args is None:  # --list-methods
        return 0
    if args.output is None:
        raise VOSInputError("--output is required")
    if args.checkpoint is not None:
        raise VOSInputError("vos-train resumes with --resume (from <output>/last.pt) and starts from weights with "
                       "--init-checkpoint; --checkpoint is for vos-segment")
    if args.output.exists() and not args.output.is_dir():
        raise VOSInputError(f"--output {args.output} exists and is not a folder")
    pick_device(args.device)  # an unknown device is refused before anything is built or written
    last = args.output / "last.pt"
    if last.exists() and not args.resume:
        raise VOSInputError(f"{last} exists: pass --resume to continue that run, or choose another --output")
    if args.init_checkpoint is not None and not (args.resume and last.exists()):
        payload = load_checkpoint(args.init_checkpoint, expected_method=args.method)
        args.method = payload["method"]
    seed_everything(args.seed)  # the initial weights are part of the run: same seed, same start
    method = build_model_from_args(args, warn_random=False) if args.method else None
    if method is None:
        raise VOSInputError("--method is required")
    if args.init_checkpoint is not None and not (args.resume and last.exists()):
        method.load_state_dict(payload["state_dict"], strict=True)
    dataset = build_dataset(args)
    config = TrainConfig(
        output=str(args.output), steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, schedule=args.schedule, warmup_steps=args.warmup_steps,
        milestones=tuple(args.milestones), gamma=args.gamma, decay_every=args.decay_every,
        grad_clip=args.grad_clip, amp=args.amp,
        checkpoint_every=args.checkpoint_every, val_every=args.val_every, log_every=args.log_every,
        plot_every=args.plot_every,
        seed=args.seed, num_workers=args.num_workers, device=args.device, ddp_find_unused=args.ddp_find_unused,
        progress=not args.no_progress,
        extra={"data": args.data, "method_config": method_config_from_args(args), "num_frames": args.num_frames,
               "size": list(args.size), "max_objects": args.max_objects,
               "augmentation": build_augmentation(args).to_dict()})
    validation = build_validation(args)
    created = not args.output.exists()
    try:
        args.output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VOSInputError(f"--output {args.output} is not writable: {exc.strerror or exc}") from exc
    try:
        trainer = Trainer(method, dataset, config, validation=validation, callbacks=callbacks)
    except VOSInputError:
        if created:  # a refused set-up leaves no run folder behind
            shutil.rmtree(args.output, ignore_errors=True)
        raise
    try:
        resumed = args.resume and trainer.resume()
        if trainer.dist.is_main:
            where = f"resumed at step {trainer.step}" if resumed else "from scratch"
            print(f"{PROG}: {method.name} {where}, {trainer.dist.world_size} process(es) on {trainer.device}")
        logs = trainer.fit(args.max_steps_this_run)
        if trainer.dist.is_main:
            state = "stopped" if trainer.step < config.steps else "done"
            print(f"{PROG}: {state} at step {trainer.step}/{config.steps}, loss {logs.get('loss', float('nan')):.4f}"
                  f" -> {trainer.checkpoint_path}")
    except BaseException:
        trainer.close(clean=False)
        raise
    trainer.close()
    return 0


def entry_point() -> None:
    sys.exit(run_main(PROG, main))


if __name__ == "__main__":
    entry_point()
