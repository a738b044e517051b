"""What the command lines share: error handling, method options, building a model.

Every command exits 0 on success, 1 with a one-line ``<prog>: error: <reason>`` on stderr for
bad input (a :class:`~vos_models.errors.VOSInputError`, raised where the input is checked), 2
for a malformed command line (argparse), 130 when interrupted. Any other exception is a bug
and keeps its traceback.
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .arguments import non_negative_int, positive_int
from ..errors import VOSInputError
from ..registry import load_or_build_method, method_options


def run_main(prog: str, main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; a :class:`VOSInputError` becomes one stderr line and status 1."""
    try:
        return main(argv) or 0
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # whoever read stdout stopped (`| head`): end quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except VOSInputError as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 1


def parse_set_value(text: str) -> Any:
    """'5' -> 5, '0.1' -> 0.1, 'true' -> True, '[1,2]' -> [1, 2], 'none' -> None, else the string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_set_options(pairs: Sequence[str] | None) -> dict[str, Any]:
    """['k=v', ...] -> {k: parsed v}."""
    config: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise VOSInputError(f"--set expects key=value with a Python identifier as key, got {pair!r}")
        config[key] = parse_set_value(value)
    return config


def add_model_arguments(parser: argparse.ArgumentParser, default_method: str | None = None) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--method", default=default_method,
                       help="registered method name (see --list-methods); default: the checkpoint's method")
    group.add_argument("--checkpoint", type=Path, help="a checkpoint written by vos-train / save_checkpoint")
    group.add_argument("--public-checkpoint", type=Path,
                       help="a checkpoint of the method's public implementation (converted on load)")
    group.add_argument("--set", dest="set_options", action="append", metavar="KEY=VALUE",
                       help="method config override, repeatable (e.g. --set top_k=20)")
    group.add_argument("--list-methods", action="store_true", help="list the registered methods and exit")


def parse_command_line(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace | None:
    """Parse a command line that builds a method: its method-specific options are added first.
    None when it asked for ``--list-methods`` (printed here): the command then exits 0."""
    add_method_specific_arguments(parser, argv)
    args = parser.parse_args(argv)
    if args.list_methods:
        print_methods()
        return None
    return args


def add_method_specific_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> None:
    """Second parsing phase: add the options the chosen ``--method`` declares (e.g. --clip-length)."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--method")
    known, _ = probe.parse_known_args(argv)
    if not known.method:
        return
    try:
        options = method_options(known.method)
    except VOSInputError:
        return  # an unknown method: reported later, with the list of methods
    if not options:
        return
    group = parser.add_argument_group(f"{known.method} options")
    for key, option in options.items():
        group.add_argument("--" + key.replace("_", "-"), dest=f"method_option_{key}", type=option.type,
                           choices=option.choices, help=option.help)


def method_config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    config = parse_set_options(args.set_options)
    for name, value in vars(args).items():
        if name.startswith("method_option_") and value is not None:
            config[name[len("method_option_"):]] = value
    return config


def build_model_from_args(args: argparse.Namespace, *, require_weights: bool = False, warn_random: bool = True):
    """Build the method the arguments ask for: our checkpoint, a public one, or fresh weights."""
    config = method_config_from_args(args)
    if args.checkpoint is not None and args.public_checkpoint is not None:
        raise VOSInputError("give either --checkpoint or --public-checkpoint, not both")
    if args.checkpoint is None and args.method is None:
        raise VOSInputError("--method is required (or --checkpoint, which names its method)")
    method, random = load_or_build_method(args.method, args.checkpoint, args.public_checkpoint, **config)
    if random:
        message = f"{args.method}: no --checkpoint or --public-checkpoint given: the weights are random"
        if require_weights:
            raise VOSInputError(message)
        if warn_random:
            warnings.warn(message, stacklevel=2)
    return method


def add_fast_path_arguments(group) -> None:
    """The inference engine's speed options (see ``InferenceEngine``), shared by the CLIs."""
    from ..engine.inference import COMPILE_MODES

    group.add_argument("--fastest", action="store_true",
                       help="the fastest measured options for this method and device (precision, compile, ...; "
                            "see vos_models.engine.presets); not with the options it picks")
    group.add_argument("--compile", nargs="?", const="default", default=None, choices=COMPILE_MODES,
                       help="torch.compile the model (optionally with a mode; reduce-overhead = CUDA graphs, GPU)")
    group.add_argument("--channels-last", action="store_true", help="NHWC weights and frames")
    group.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    group.add_argument("--cuda-graphs", action="store_true",
                       help="replay the method's fixed-shape parts as CUDA graphs (GPU only)")
    group.add_argument("--prefetch", type=non_negative_int, default=2,
                       help="frames decoded (and uploaded) ahead in a background thread; 0 = off (default 2)")
    group.add_argument("--fold-norms", action="store_true",
                       help="fold frozen batch norms into the convolutions before them (checked on a probe video)")
    group.add_argument("--winograd", action="store_true",
                       help="with --compile on the CPU (TTVOS, CRVOS, RGMP): 3x3 convolutions with 128+ input and "
                            "output channels run as Winograd F(2x2,3x3) in the compiled tracking step (2.25x fewer "
                            "multiply-adds; part of --fastest)")
    group.add_argument("--aot-dir", default=None, metavar="DIR",
                       help="with --compile or --fastest on the CPU (TTVOS, CRVOS, RGMP): keep the compiled tracking step "
                            "in DIR (AOTInductor package) and load it in later runs instead of compiling again")


def fast_path_options(args: argparse.Namespace, method=None, device=None) -> dict[str, Any]:
    """InferenceEngine keyword arguments (``precision`` included) from
    :func:`add_fast_path_arguments`' options; with ``--fastest``, the preset of
    :func:`vos_models.engine.presets.fastest_options` for ``method`` on ``device``."""
    chosen = {"compile": args.compile or False, "channels_last": args.channels_last,
              "cuda_graphs": args.cuda_graphs, "fold_norms": args.fold_norms,
              "winograd": getattr(args, "winograd", False), "precision": getattr(args, "precision", "float32")}
    common = {"threads": args.threads, "prefetch": args.prefetch}
    if getattr(args, "aot_dir", None):
        if not (chosen["compile"] or getattr(args, "fastest", False)):
            raise VOSInputError("--aot-dir keeps the compiled tracking step on disk: give --compile or --fastest "
                                "with it")
        common["aot_dir"] = args.aot_dir
    if not getattr(args, "fastest", False):
        return {**chosen, **common}
    clashing = [flag for flag, value, default in (("--compile", chosen["compile"], False),
                                                  ("--channels-last", chosen["channels_last"], False),
                                                  ("--cuda-graphs", chosen["cuda_graphs"], False),
                                                  ("--fold-norms", chosen["fold_norms"], False),
                                                  ("--winograd", chosen["winograd"], False),
                                                  ("--precision", chosen["precision"], "float32"))
                if value != default]
    if clashing:
        raise VOSInputError(f"--fastest picks the precision and fast paths itself; drop {', '.join(clashing)} "
                            "or --fastest")
    if method is None:  # checking the arguments only
        return {**chosen, **common}
    from ..engine.presets import fastest_options

    return {**fastest_options(method, device), **common}


def pick_device(name: str) -> torch.device:
    """--device: "auto", "cpu", "cuda" or "cuda:N" (VOSInputError for anything else)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise VOSInputError(f"--device {name}: expected cpu, cuda, cuda:N or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VOSInputError(f"--device {name}: CUDA is not available on this machine")
    return device


def print_methods() -> None:
    from ..registry import available_methods

    for name in available_methods():
        options = method_options(name)
        extra = f"  (options: {', '.join('--' + k.replace('_', '-') for k in options)})" if options else ""
        print(f"{name}{extra}")
