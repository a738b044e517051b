"""vos-evaluate: J&F of predicted masks against ground truth (DAVIS 2017 semi-supervised).

Examples::

    vos-evaluate --gt DAVIS --pred results                 # every sequence with a result folder
    vos-evaluate --gt DAVIS --pred results --sequences blackswan,dog --csv jf.csv --markdown jf.md

``--gt`` is a DAVIS-layout root (frames list from JPEGImages, masks from Annotations) or a folder
of ``<sequence>/<frame>.png`` masks. Prints the markdown table; writes the per-object CSV (with
a final ``Global`` row) and the markdown table (default: ``<pred>/jf_results.csv`` and ``.md``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from ..atomic import write_text
from ..metrics.evaluate import VOID_MODES, evaluate_folders, match_sequences
from ..metrics.jf import BOUNDARY_THRESHOLD
from .arguments import Parser, existing_folder, positive_float
from ..errors import VOSInputError
from .common import run_main

PROG = "vos-evaluate"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="J&F evaluation (DAVIS 2017 semi-supervised protocol).")
    parser.add_argument("--gt", type=existing_folder, required=True, help="DAVIS-layout root, or a folder of <seq>/<frame>.png")
    parser.add_argument("--pred", type=existing_folder, required=True, help="results root: <pred>/<seq>/<frame>.png")
    parser.add_argument("--sequences", help="comma-separated sequences (default: all with predictions)")
    parser.add_argument("--void", choices=VOID_MODES, default="davis2017",
                        help="void (255) handling: davis2017 = as the official code (counted as background), "
                             "ignore = excluded from J and F")
    parser.add_argument("--bound-th", type=positive_float, default=BOUNDARY_THRESHOLD,
                        help="boundary tolerance: fraction of the diagonal, or pixels if >= 1 (default 0.008)")
    parser.add_argument("--csv", type=Path, help="CSV output (default <pred>/jf_results.csv)")
    parser.add_argument("--markdown", type=Path, help="markdown output (default <pred>/jf_results.md)")
    parser.add_argument("--no-write", action="store_true", help="print only, write no files")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--strict", action="store_true",
                        help="refuse a run whose predictions do not cover every ground-truth sequence")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sequences = [s for s in args.sequences.split(",") if s] if args.sequences else None
    csv_path = args.csv or args.pred / "jf_results.csv"
    md_path = args.markdown or args.pred / "jf_results.md"
    if not args.no_write:
        for path in (csv_path, md_path):
            if not path.parent.is_dir():
                raise VOSInputError(f"cannot write {path}: folder {path.parent} does not exist")
    if sequences is None:
        match = match_sequences(args.gt, args.pred)
        sequences = match.scored
        print(f"{PROG}: scoring {len(match.scored)} sequence(s) of {args.pred}: {_names(match.scored)}")
        if match.missing:
            print(f"{PROG}: {len(match.missing)} ground-truth sequence(s) have no predictions: {_names(match.missing)}")
            if args.strict:
                raise VOSInputError(f"--strict: {len(match.missing)} ground-truth sequence(s) have no predictions in "
                                    f"{args.pred}: {_names(match.missing)}")
        if match.unknown:
            print(f"{PROG}: ignored {len(match.unknown)} prediction folder(s) without ground truth: "
                  f"{_names(match.unknown)}")
    result = evaluate_folders(args.gt, args.pred, sequences, void=args.void, bound_th=args.bound_th,
                              progress=not args.no_progress)
    if not result.objects:
        raise VOSInputError("the ground truth holds no objects to score")
    markdown = result.markdown()
    print(markdown, end="")
    if not args.no_write:
        for path, text in ((csv_path, result.csv_text()), (md_path, markdown)):
            try:
                write_text(path, text)
            except OSError as exc:  # the folder exists (checked above) but takes no file
                raise VOSInputError(f"cannot write {path}: {exc.strerror or exc}") from exc
        print(f"wrote {csv_path} and {md_path}")
    return 0


def _names(names: list[str], most: int = 8) -> str:
    return ", ".join(names[:most]) + (f", ... ({len(names) - most} more)" if len(names) > most else "")


def entry_point() -> None:
    sys.exit(run_main(PROG, main))


if __name__ == "__main__":
    entry_point()
