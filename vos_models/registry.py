"""Method registry and our own checkpoint format.

``register_method(name, factory)`` makes a method buildable by name (``factory(**config)`` ->
VOSMethod). Methods of this package register themselves when their package
``vos_models.methods.<name>`` is imported; :func:`build_method` imports it on demand (a name
with dashes maps to underscores: ``copy-previous`` -> ``vos_models.methods.copy_previous``).
A method registers its public-checkpoint converter with it (``public_converter=``);
:func:`load_public_checkpoint` is the one loader of public weights.

:func:`build_method` is the one place a method's build config is recorded
(``method.build_config``, what :func:`save_checkpoint` stores): the converters and
:func:`load_method` build through it too.

Checkpoint format (a ``torch.save`` dict)::

    {"format": "vos_models.checkpoint", "version": 1, "method": name, "config": dict,
     "state_dict": ..., **extra}

Writes are atomic: the file is written to a temporary name in the same folder, flushed and
fsynced, then ``os.replace``d onto the target, so a kill never leaves a truncated checkpoint.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from .atomic import atomic_path
from .engine.interface import VOSMethod
from .backbones._weights import read_weights_file
from .errors import CheckpointError, VOSInputError

CHECKPOINT_FORMAT = "vos_models.checkpoint"
CHECKPOINT_VERSION = 1

_REGISTRY: dict[str, Callable[..., VOSMethod]] = {}
_OPTIONS: dict[str, dict[str, "MethodOption"]] = {}
#: name -> converter(public state dict or checkpoint dict, **config) -> (our state dict, build config)
_CONVERTERS: dict[str, Callable[..., tuple[dict, dict]]] = {}


class MethodOption:
    """A method-specific config key the command lines expose as ``--<key with dashes>``.

    ``register_method("pcvos", factory, options={"clip_length": MethodOption(int, "frames per clip")})``
    makes ``vos-segment --method pcvos --clip-length 5`` pass ``clip_length=5`` to the factory.
    Any key can also be given as ``--set key=value``.

    ``saved=False`` marks an initialisation-only option (e.g. a weight file to start a trunk
    from): it is not recorded in the build config that checkpoints store, since the checkpoint
    already holds the weights and the file may be gone when it is loaded.
    """

    def __init__(self, type: Callable[[str], Any] = str, help: str = "", choices: list | None = None,
                 saved: bool = True):
        self.type = type
        self.help = help
        self.choices = choices
        self.saved = saved

    def __repr__(self) -> str:
        return f"MethodOption({getattr(self.type, '__name__', self.type)}, {self.help!r})"


def register_method(name: str, factory: Callable[..., VOSMethod], *, overwrite: bool = False,
                    options: dict[str, MethodOption] | None = None,
                    public_converter: Callable[..., tuple[dict, dict]] | None = None) -> None:
    """Register ``factory(**config) -> VOSMethod`` under ``name``.

    options: config keys to expose as command-line flags (see :class:`MethodOption`).
    public_converter: ``convert(checkpoint, **config) -> (state_dict, build_config)`` turns the
    loaded file of the method's public implementation into our state dict and the config to
    build the method with (see :func:`load_public_checkpoint`); None when there is none.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_method: name must be a non-empty string, got {name!r}")
    if name in _REGISTRY and _REGISTRY[name] is not factory and not overwrite:
        raise ValueError(f"register_method: {name!r} is already registered (pass overwrite=True to replace it)")
    _REGISTRY[name] = factory
    _OPTIONS[name] = dict(options or {})
    _CONVERTERS.pop(name, None)
    if public_converter is not None:
        _CONVERTERS[name] = public_converter


def method_options(name: str) -> dict[str, MethodOption]:
    """The command-line options a registered method declares (empty if none)."""
    _require(name)
    return dict(_OPTIONS.get(name, {}))


def _require(name: str) -> Callable[..., VOSMethod]:
    """The factory registered as ``name`` (importing its package on demand)."""
    if name not in _REGISTRY:
        _import_method_package(name)
    if name not in _REGISTRY:
        raise VOSInputError(f"unknown method {name!r}; available: {', '.join(available_methods())}")
    return _REGISTRY[name]


def _import_method_package(name: str) -> None:
    module = "vos_models.methods." + name.replace("-", "_")
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.startswith(exc.name):
            return  # no such package: the caller reports an unknown method
        raise


def available_methods() -> list[str]:
    """Names of every registered method (imports every package under vos_models.methods)."""
    from . import methods

    for info in pkgutil.iter_modules(methods.__path__):
        try:
            importlib.import_module(f"{methods.__name__}.{info.name}")
        except Exception as exc:  # one broken method must not hide the others; say so
            warnings.warn(f"vos_models: method package {info.name!r} failed to import: {exc}", stacklevel=2)
    return sorted(_REGISTRY)


def _check_config_keys(name: str, factory: Callable[..., VOSMethod], config: dict[str, Any]) -> None:
    """Name the config keys the factory does not take (a typo in ``--set key=value``)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check against
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    accepted = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(set(config) - accepted)
    if unknown:
        raise VOSInputError(f"method {name!r} has no config key {', '.join(map(repr, unknown))}; "
                            f"it takes {', '.join(sorted(accepted))}")


def build_method(name: str, **config: Any) -> VOSMethod:
    """Build the method registered as ``name`` with ``config``; records the config on it
    (``build_config``, without initialisation-only options)."""
    factory = _require(name)
    _check_config_keys(name, factory, config)
    method = factory(**config)
    if not isinstance(method, VOSMethod):
        raise TypeError(f"build_method: factory for {name!r} returned {type(method).__name__}, not a VOSMethod")
    method.name = name
    unsaved = {key for key, option in _OPTIONS.get(name, {}).items() if not option.saved}
    method.build_config = {key: value for key, value in config.items() if key not in unsaved}
    return method


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """torch.save to ``path`` atomically (temp file in the same folder, fsync, os.replace)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, fsync=True) as tmp:
            torch.save(obj, tmp)
    except OSError as exc:  # disk full, read-only, no permission: the old file stays as it was
        raise CheckpointError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except RuntimeError as exc:  # torch.save reports a failed write as a RuntimeError
        if "write" not in str(exc).lower():
            raise
        raise CheckpointError(f"cannot write {path}: {str(exc).splitlines()[0]}") from exc
    return path


def save_checkpoint(path: str | Path, method: VOSMethod, extra: dict | None = None) -> Path:
    """Write ``method``'s weights and build config (plus ``extra`` entries) atomically to ``path``.

    The build config is what :func:`build_method` recorded; a method constructed directly has
    none, so :func:`load_method` would rebuild it with the defaults: build with
    :func:`build_method` what you mean to save."""
    extra = dict(extra or {})
    reserved = {"format", "version", "method", "config", "state_dict"} & set(extra)
    if reserved:
        raise ValueError(f"save_checkpoint: extra may not use reserved keys {sorted(reserved)}")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "method": method.name,
        "config": dict(method.build_config),
        "state_dict": method.state_dict(),
        **extra,
    }
    return atomic_torch_save(payload, path)


def load_checkpoint(path: str | Path, expected_method: str | None = None,
                    map_location: str | torch.device = "cpu") -> dict:
    """Read one of our checkpoints and check it; returns the dict (see module docstring).

    Raises InputNotFoundError (a FileNotFoundError) when absent, CheckpointError when the file
    is not one of our checkpoints or belongs to another method than ``expected_method``.
    """
    path = Path(path)
    # Our checkpoints hold tensors, numbers, strings and RNG state tensors only.
    payload = read_weights_file(path, "checkpoint", map_location)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a vos_models checkpoint (a public checkpoint? "
                              "use --public-checkpoint / the method's load_public_checkpoint)")
    if payload.get("version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {payload.get('version')}, newer than this "
                              f"code understands ({CHECKPOINT_VERSION})")
    if expected_method is not None and payload.get("method") != expected_method:
        raise CheckpointError(f"{path} is a checkpoint of method {payload.get('method')!r}, not {expected_method!r}")
    return payload


def load_method(path: str | Path, expected_method: str | None = None,
                map_location: str | torch.device = "cpu", **config_overrides: Any) -> VOSMethod:
    """Build the method a checkpoint was saved from (its config, then ``config_overrides``)
    and load its weights strictly."""
    payload = load_checkpoint(path, expected_method, map_location)
    config = {**payload.get("config", {}), **config_overrides}
    method = build_method(payload["method"], **config)
    _load_weights(method, payload["state_dict"], f"{path}: weights do not fit {payload['method']!r} built with {config}")
    return method


def _load_weights(method: VOSMethod, state_dict: dict, what: str) -> None:
    try:
        method.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{what}: {str(exc).splitlines()[0]}") from exc


def load_public_checkpoint(name: str, path: str | Path, map_location: str | torch.device = "cpu",
                           **config: Any) -> VOSMethod:
    """The method ``name`` holding the weights of a checkpoint file of its public
    implementation, converted by the converter registered with it, in eval mode.

    ``config`` overrides the converter's build config (by default the paper's model, or what
    the file shows, e.g. TTVOS's backbone). Raises InputNotFoundError for a missing file,
    VOSInputError when the method has no converter, CheckpointError when the file cannot be
    read or does not fit (every missing, unexpected or misshaped key named).
    """
    _require(name)
    if name not in _CONVERTERS:
        raise VOSInputError(f"method {name!r} has no public-checkpoint converter")
    path = Path(path)
    raw = read_weights_file(path, "public checkpoint", map_location)
    state_dict, build_config = _CONVERTERS[name](raw, **config)
    method = build_method(name, **build_config)
    _load_weights(method, state_dict, f"{path}: converted weights do not fit {name!r}")
    return method.eval()


def load_or_build_method(name: str | None, checkpoint: str | Path | None = None,
                         public_checkpoint: str | Path | None = None, **config: Any) -> tuple[VOSMethod, bool]:
    """The method a caller asks for: from our checkpoint (which names its method; `name`, if
    given, must match), from a public checkpoint of `name` (converted), else built fresh.
    Returns it and whether its weights are random (built fresh, with parameters). The callers
    (the command lines, the Tracker) refuse both files at once, each in its own words."""
    if checkpoint is not None:
        return load_method(checkpoint, expected_method=name, **config), False
    if public_checkpoint is not None:
        return load_public_checkpoint(name, public_checkpoint, **config), False
    method = build_method(name, **config)
    return method, any(p.numel() for p in method.parameters())
