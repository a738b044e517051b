"""vos-segment: segment videos with a VOS method and write DAVIS-layout palette PNGs.

Examples::

    # a folder of frames + the first frame's mask
    vos-segment --input JPEGImages/480p/blackswan --mask Annotations/480p/blackswan/00000.png \\
                --output results --method copy-previous
    # a video file, masks for several frames (objects may start later), an overlay video
    vos-segment --input clip.mp4 --masks my_masks/ --output results --overlay results/clip.mp4 \\
                --checkpoint runs/x/last.pt --device cuda --precision bfloat16
    # every sequence of a DAVIS-layout dataset, semi-supervised: each object's mask is given on
    # the frame where it first appears in Annotations, never again (ground truth of later frames
    # is what the evaluation scores, not an input)
    vos-segment --davis DAVIS --split val --output results --method copy-previous
    # the same over 4 processes (one GPU each): rank I segments sequences I, I+4, ...
    torchrun --nproc-per-node 4 -m vos_models.cli.segment --davis DAVIS --split val --output results ...
    vos-segment --davis DAVIS --split val --output results --shard 1/4 ...   # or one shard by hand

Output: ``<output>/<name>/<frame>.png`` (palette PNGs with the user's ids), written into a hidden
temporary folder and renamed into place when the video is done, so a failure leaves nothing.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

from ..atomic import make_private_dir, remove_stale_temporaries
from ..data.davis import DavisLayout, read_mask_folder
from ..data.frames import FrameSource, VideoWriter, open_frames
from ..data.palette import overlay, read_first_mask, read_mask, write_mask
from ..engine.inference import PRECISIONS, InferenceEngine
from ..engine.objects import first_appearances
from .arguments import Parser, positive_float
from ..errors import VOSInputError
from .sharding import local_device, resolve_shard, shard_argument, shard_sequences
from .common import (add_fast_path_arguments, add_model_arguments, build_model_from_args, fast_path_options,
                     method_config_from_args, parse_command_line, pick_device, run_main)

PROG = "vos-segment"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Segment videos with a semi-supervised VOS method.")
    source = parser.add_argument_group("input (one of)")
    source.add_argument("--input", type=Path, help="a folder of frames or a video file")
    source.add_argument("--davis", type=Path, help="a DAVIS-layout root: segment its sequences (semi-supervised: "
                                                   "each object's mask on its first annotated frame only)")
    masks = parser.add_argument_group("masks (with --input)")
    masks.add_argument("--mask", type=Path, help="palette PNG of the first frame's objects")
    masks.add_argument("--masks", type=Path,
                       help="folder of palette PNGs named after frames (video files: 00000.png = frame 0); "
                            "objects start on the first frame whose mask has them, and a later mask of an "
                            "object corrects it")
    parser.add_argument("--name", help="output sequence name (default: the input's name)")
    parser.add_argument("--split", help="with --davis: ImageSets/2017/<split>.txt sequences")
    parser.add_argument("--sequences", help="with --davis: comma-separated sequence names")
    parser.add_argument("--resolution", default="480p", help="with --davis: resolution folder (default 480p)")
    parser.add_argument("--shard", type=shard_argument, default=None,
                        help="with --davis: segment only sequences I, I+N, I+2N, ... (I/N, 0 <= I < N); under "
                             "torchrun the shard is RANK/WORLD_SIZE")
    parser.add_argument("--output", type=Path, required=False, help="results root: <output>/<name>/<frame>.png")
    parser.add_argument("--overlay", type=Path, help="also write an overlay video (.mp4 or .avi) (with --input)")
    parser.add_argument("--fps", type=positive_float, default=None, help="overlay frame rate (default: the video's, else 24)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing result folders")
    add_model_arguments(parser, default_method=None)
    run = parser.add_argument_group("run")
    run.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    run.add_argument("--precision", default="float32", choices=sorted(PRECISIONS),
                     help="autocast dtype (float16 needs a GPU)")
    add_fast_path_arguments(run)
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _first_mask_provider(source: FrameSource, args) -> dict:
    """{frame name: mask path} from --mask / --masks, checked against the frames' size."""
    size = source.size
    if args.mask is not None and args.masks is not None:
        raise VOSInputError("give --mask or --masks, not both")
    if args.mask is not None:
        read_first_mask(args.mask, expected_size=size)
        return {source.names[0]: args.mask}
    if args.masks is not None:
        return _with_objects_first(read_mask_folder(args.masks, source.names, expected_size=size), source.names)
    raise VOSInputError("--input needs --mask (first frame) or --masks (a folder of masks)")


def _with_objects_first(masks: dict, frame_names: list[str]) -> dict:
    """The masks of a video ({frame name: path}); the earliest one must hold an object."""
    first = min(masks, key=frame_names.index)
    read_first_mask(masks[first])
    return masks


class _ResultFolder:
    """``<output>/<name>``, filled through a hidden temporary folder renamed on success."""

    def __init__(self, output: Path, name: str, overwrite: bool):
        self.final = output / name
        if self.final.exists() and not overwrite:
            raise VOSInputError(f"{self.final} already exists (use --overwrite to replace it)")
        self.created_root = not output.exists()
        self.output = output
        try:
            output.mkdir(parents=True, exist_ok=True)
            # what a killed run of this name left: its partial results and a replaced old folder
            remove_stale_temporaries(output, f".{name}.partial-")
            remove_stale_temporaries(output, f".{name}.old-")
            self.tmp = make_private_dir(output, f".{name}.partial-")
        except OSError as exc:
            raise VOSInputError(f"output folder {output} is not writable: {exc.strerror or exc}") from exc

    def commit(self) -> Path:
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.old-{os.getpid()}-{self.tmp.name[-8:]}")
            self.final.rename(old)
            self.tmp.rename(self.final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            self.tmp.rename(self.final)
        return self.final

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self.created_root:
            try:
                self.output.rmdir()  # only if still empty: results of earlier videos stay
            except OSError:
                pass


def segment_one(engine: InferenceEngine, source: FrameSource, masks: dict, output: Path, name: str, *,
                overwrite: bool, overlay_path: Path | None, fps: float | None, progress: bool | str,
                overall=None, first_appearance_only: bool = False) -> tuple[Path, object]:
    """Segment one video into ``output/name``; returns (folder, run statistics). ``progress``:
    False, True or the bar's label; ``overall``: a bar over several videos, advanced per frame.
    ``first_appearance_only``: each object's mask is given on the first frame that has it and
    never again (the semi-supervised protocol for ground-truth annotations); otherwise every
    mask is given, a later one correcting its objects."""
    folder = _ResultFolder(output, name, overwrite)
    writer = None
    try:
        if overlay_path is not None:
            if overlay_path.parent and not overlay_path.parent.is_dir():
                raise VOSInputError(f"overlay folder {overlay_path.parent} does not exist")
            writer = VideoWriter(overlay_path, fps or source.fps or 24.0, source.size)
        frames_by_name = {}
        size = source.size

        def read(frame_name: str):
            path = masks.get(frame_name)
            return None if path is None else read_mask(path, expected_size=size)

        mask_for = first_appearances(read) if first_appearance_only else read

        def frames():
            for frame_name, frame in source:
                if writer is not None:
                    frames_by_name[frame_name] = frame  # held until its result arrives (a clip at most)
                yield frame_name, frame

        label = (progress if isinstance(progress, str) else name) if progress else False
        for result in engine.segment(frames(), mask_for, progress=label, total=len(source)):
            if overall is not None:
                overall.update(1)
            try:
                write_mask(folder.tmp / f"{result.name}.png", result.labels)
            except OSError as exc:  # disk full, read-only: the partial results are removed below
                raise VOSInputError(f"cannot write results to {folder.output}: {exc.strerror or exc}") from exc
            if writer is not None:
                writer.write(overlay(frames_by_name.pop(result.name), result.labels))
        if writer is not None:
            writer.close()
            writer = None
    except BaseException:
        folder.abort()
        if writer is not None:
            writer.abort()
        raise
    return folder.commit(), engine.last_stats


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_command_line(build_parser(), argv)
    if args is None:  # --list-methods
        return 0
    method_config_from_args(args)  # a malformed --set fails before any file is touched
    fast_path_options(args)          # and so does a clash of --fastest with the options it picks
    if (args.input is None) == (args.davis is None):
        raise VOSInputError("give exactly one of --input (frames folder or video file) or --davis (dataset root)")
    if args.output is None:
        raise VOSInputError("--output is required")
    # Check every input before building the model or touching the output folder.
    jobs = []
    shard = resolve_shard(args.shard)
    if args.input is not None:
        if shard != (0, 1):
            raise VOSInputError("--shard (or torchrun) splits the sequences of --davis; --input is one video")
        source = open_frames(args.input)
        masks = _first_mask_provider(source, args)
        name = args.name or (args.input.name if args.input.is_dir() else args.input.stem)
        jobs.append((name, source, masks))
    else:
        if args.overlay is not None:
            raise VOSInputError("--overlay works with --input (one video), not --davis")
        layout = DavisLayout(args.davis, args.resolution)
        names = args.sequences.split(",") if args.sequences else layout.sequences(args.split)
        names = shard_sequences(names, shard)
        for seq in names:
            source = layout.frames(seq)
            masks = _with_objects_first(read_mask_folder(layout.mask_root / seq, source.names,
                                                         expected_size=source.size), source.names)
            jobs.append((seq, source, masks))
    if args.output.exists() and not args.output.is_dir():
        raise VOSInputError(f"--output {args.output} exists and is not a folder")
    method = build_model_from_args(args)
    device = local_device(pick_device(args.device))
    engine = InferenceEngine(method, device=device, **fast_path_options(args, method, device))
    overall = _overall_progress(jobs, shard) if args.davis is not None and not args.no_progress else None
    try:
        for number, (name, source, masks) in enumerate(jobs, 1):
            label = name if overall is None else f"{name} [{number}/{len(jobs)}]"
            folder, stats = segment_one(engine, source, masks, args.output, name, overwrite=args.overwrite,
                                        first_appearance_only=args.davis is not None,
                                        overlay_path=args.overlay, fps=args.fps,
                                        progress=False if args.no_progress else label, overall=overall)
            compiled = engine.tracking.take_compile_seconds() if engine.tracking is not None else None
            compile_note = f", compile {compiled:.1f} s included" if compiled else ""
            print(f"{name}: {stats.frames} frames, {stats.objects} object(s), model {stats.model_fps:.1f} fps, "
                  f"overall {stats.total_fps:.1f} fps ({method.name}, {engine.device}, {engine.precision}"
                  f"{compile_note}) -> {folder}")
    finally:
        if overall is not None:
            overall.close()
    return 0


def _overall_progress(jobs: list, shard: tuple[int, int]):
    """--davis: one bar over every frame of this process's sequences (fps and ETA of the whole
    run), above each sequence's own bar."""
    from tqdm import tqdm

    label = "all sequences" if shard == (0, 1) else f"shard {shard[0]}/{shard[1]}"
    return tqdm(total=sum(len(source) for _, source, _ in jobs), desc=f"{label} ({len(jobs)})", unit="frame",
                position=0)


def entry_point() -> None:
    sys.exit(run_main(PROG, main))


if __name__ == "__main__":
    entry_point()
