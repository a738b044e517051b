"""Command-line argument types and the parser the CLIs share.

Each type refuses a bad value with a message that says what was expected (argparse names the
option); the parser prints ``<prog>: error: argument --opt: <message>`` and one hint line,
without the long usage block, and exits 2 (a malformed command line).
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path
from typing import Callable


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults formatter, also for options without a help text (argparse's own shows
    nothing for those), and silent where there is no value to show (None, or a flag's False)."""

    @staticmethod
    def _has_default(action: argparse.Action) -> bool:
        return action.default not in (None, False, argparse.SUPPRESS) and bool(action.option_strings)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or not self._has_default(action):
            return text
        return f"{text} (default: %(default)s)".strip()

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and self._has_default(action):
            action = copy.copy(action)  # the formatter must not change the parser
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


class Parser(argparse.ArgumentParser):
    """argparse with every default in --help and a two-line error."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        print(f"{self.prog}: error: {message}\n{self.prog}: see {self.prog} --help", file=sys.stderr)
        sys.exit(2)


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An int >= minimum."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value
    parse.__name__ = f"int >= {minimum}"
    return parse


def float_in(low: float, high: float = math.inf, *, low_open: bool = False) -> Callable[[str], float]:
    """A finite float in [low, high] ((low, high] with low_open)."""
    bracket = "(" if low_open else "["
    span = f"{bracket}{low:g}, {'inf)' if high == math.inf else f'{high:g}]'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {span}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (low_open and value == low) or value > high:
            raise argparse.ArgumentTypeError(f"expected a number in {span}, got {text}")
        return value
    parse.__name__ = f"number in {span}"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
positive_float = float_in(0.0, low_open=True)
non_negative_float = float_in(0.0)
probability = float_in(0.0, 1.0)


def existing_folder(text: str) -> Path:
    """A path to a folder that exists (an input: refused before anything is read or written)."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"folder not found: {text}")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, expected a folder")
    return path
