"""vos-export: write a method's tracking step as ONNX or OpenVINO IR, with a JSON sidecar.

Examples::

    vos-export --method ttvos --public-checkpoint TTVOS.pth --size 480x854 ttvos_480p.onnx
    vos-export --checkpoint runs/crvos/last.pt --format openvino --size 480x854 crvos_480p.xml

The output is the model file (OpenVINO: the .xml and its .bin) and ``<OUTPUT>.json``, which
names every input and output, its shape and the state field it carries, and says how to loop
(``docs/export.md``). Only methods with a tracking step export (TTVOS, CRVOS). An existing
output is refused unless ``--overwrite``.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

from ..errors import VOSInputError
from ..export import FORMATS, check_exportable, export_tracking_step
from .arguments import Parser, positive_int
from .common import add_model_arguments, build_model_from_args, method_config_from_args, parse_command_line, run_main

PROG = "vos-export"
SUFFIXES = {".onnx": "onnx", ".xml": "openvino"}


def frame_size(text: str) -> tuple[int, int]:
    """'480x854' -> (480, 854): height x width, each at least 32 pixels."""
    height, sep, width = text.lower().partition("x")
    try:
        size = (int(height), int(width)) if sep else None
    except ValueError:
        size = None
    if size is None or min(size) < 32:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH with both >= 32 (e.g. 480x854), got {text!r}")
    return size


frame_size.__name__ = "HEIGHTxWIDTH"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Export a VOS method's tracking step (a frame without masks) to ONNX "
                                           "or OpenVINO IR, with a JSON sidecar describing its inputs and outputs.")
    parser.add_argument("output", type=Path, metavar="OUTPUT",
                        help="model file: .onnx, or .xml for OpenVINO IR (its .bin is written beside it)")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="onnx or openvino (default: from OUTPUT's suffix, .onnx or .xml)")
    parser.add_argument("--size", type=frame_size, default="480x854", metavar="HxW",
                        help="frame size the model takes, height x width")
    parser.add_argument("--objects", type=positive_int, default=1,
                        help="objects of the example the graph is traced with; with --static-objects the only "
                             "count it takes")
    parser.add_argument("--static-objects", action="store_true",
                        help="fix the object count to --objects (default: any count, except RGMP: its one-object "
                             "step differs from the several-object one, so it is always exported for --objects)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_model_arguments(parser, default_method=None)
    return parser


def _format(args: argparse.Namespace) -> str:
    suffix = args.output.suffix.lower()
    if args.format is None:
        if suffix not in SUFFIXES:
            raise VOSInputError(f"cannot tell the format from {args.output.name!r}: name it .onnx or .xml, "
                                f"or give --format")
        return SUFFIXES[suffix]
    if args.format == "openvino" and suffix != ".xml":
        raise VOSInputError(f"--format openvino writes an .xml (and its .bin); got OUTPUT {args.output}")
    return args.format


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_command_line(build_parser(), argv)
    if args is None:  # --list-methods
        return 0
    method_config_from_args(args)  # a malformed --set fails before anything is built
    format = _format(args)
    # Refuse what cannot work before building the model (a ResNet-50 takes seconds).
    if args.output.exists() and not args.overwrite:
        raise VOSInputError(f"{args.output} already exists (use --overwrite to replace it)")
    if not args.output.parent.is_dir():
        raise VOSInputError(f"output folder {args.output.parent} does not exist")
    method = build_model_from_args(args, warn_random=False)
    check_exportable(method)
    if args.checkpoint is None and args.public_checkpoint is None:  # said after the refusal, not before
        warnings.warn(f"{method.name}: no --checkpoint or --public-checkpoint given: the exported weights are "
                      f"random", stacklevel=1)
    height, width = args.size
    start = time.perf_counter()
    result = export_tracking_step(method, args.output, format, height=height, width=width, objects=args.objects,
                                  dynamic_objects=False if args.static_objects else None, overwrite=args.overwrite,
                                  source=str(args.checkpoint or args.public_checkpoint or "random weights"))
    objects = result.description["objects"]
    counted = "any object count" if objects["dynamic"] else f"{objects['count']} object(s)"
    print(f"{method.name}: tracking step, {height}x{width}, {counted} -> "
          f"{', '.join(str(p) for p in result.files)} + {result.sidecar.name} "
          f"({time.perf_counter() - start:.1f} s)")
    return 0


def entry_point() -> None:
    sys.exit(run_main(PROG, main))


if __name__ == "__main__":
    entry_point()
