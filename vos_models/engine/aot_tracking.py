"""The tracking step compiled ahead of time into a package on disk (AOTInductor), CPU.

:class:`~.tracking.CompiledTracking` compiles the tracking step in every process: 5-60 s on the
first tracked frame, and the compiler's memory on top of the model's (peak RSS 700-830 MB at
480p). :class:`PackagedTracking` does the compile once and keeps it: the step is exported
(``torch.export``, under the engine's autocast), compiled by AOTInductor with the weights frozen
(bfloat16 casts, batch norms folded, oneDNN prepacking done once), and written to
``<folder>/<key>.pt2``. A later process with the same weights, frame size and object count loads
that file (a fraction of a second once cached by the OS) and runs it without dynamo or Inductor.

Measured (TTVOS, 854x480, one object, 2 threads, AMD EPYC with AVX-512-BF16, torch 2.13.0): the
compile 31 s; in a fresh process, load 2.9 s, a step 158 ms (the in-process compiled step: 156
ms), peak RSS 510 MB (702 MB compiling in-process; torch alone 219 MB).

The key (a SHA-256 over what the compiled code depends on) names the file: the method's name,
the digest of every weight and buffer, the digest of the Python source the step is traced from
(every ``.py`` file of ``vos_models`` and ``vos_kernels``: a new release or a local edit of a
method, an op's composition or the Winograd code compiles anew instead of running a package
traced from the old code), which convolutions run as Winograd (:mod:`.winograd`),
the shapes and dtypes of the frame and the state tensors,
the autocast dtype, the torch version and the CPU capability the code is compiled for. Change
any of them and a new package is compiled beside the old one; a package is never reused for
other weights. Files are written atomically (a killed compile leaves no half-written package).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import torch
from torch import Tensor

from ..atomic import make_private_dir, remove_stale_temporaries, write_text
from ..errors import VOSInputError
from .interface import VOSMethod
from .tracking import TrackingRunner
from .winograd import WinogradConv2d

_BUILD_PREFIX = ".aot-build."


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)};".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """SHA-256 of every ``.py`` file of the ``vos_models`` and ``vos_kernels`` packages (relative
    paths and bytes): the code a tracking step is traced from. Computed once per process."""
    import vos_kernels

    import vos_models

    digest = hashlib.sha256()
    for package in (vos_models, vos_kernels):
        root = Path(package.__file__).resolve().parent
        for path in sorted(root.rglob("*.py")):
            digest.update(f"{package.__name__}/{path.relative_to(root).as_posix()}:".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


class PackagedTracking(TrackingRunner):
    """``method.track`` compiled ahead of time into ``folder``; call it with a video's state and
    a frame, like :class:`~.tracking.CompiledTracking`.

    Args:
        method: a frame-wise :class:`VOSMethod` with a tracking step, on the CPU, as the engine
            runs it (folded norms included).
        folder: where packages are kept (created if missing).
        autocast_dtype: the dtype of the engine's CPU autocast (torch.bfloat16), or None.
    """

    def __init__(self, method: VOSMethod, folder: str | Path, autocast_dtype: torch.dtype | None = None):
        super().__init__(method)
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise VOSInputError(f"aot_dir: expected a folder for the compiled packages, got the file {str(folder)!r}")
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.autocast_dtype = autocast_dtype
        self._weights = weights_digest(method)
        # Which convolutions the compiled graph computes by Winograd (engine option winograd).
        self._winograd = [name for name, module in method.named_modules() if isinstance(module, WinogradConv2d)]
        #: loaded packages by the shapes and dtypes of their inputs (the part of the key that
        #: changes within a process), so a frame looks its package up without hashing the key
        self._runners: dict[tuple, object] = {}
        #: per package file used: "compiled" or "loaded"
        self.packages: dict[Path, str] = {}

    def key(self, frame: Tensor, inputs: list[Tensor]) -> dict:
        """What the compiled code depends on (its SHA-256 names the package)."""
        return {"method": self.method.name, "weights": self._weights, "code": source_digest(),
                "winograd": self._winograd,
                "inputs": [[list(t.shape), str(t.dtype)] for t in (frame, *inputs)],
                "autocast": str(self.autocast_dtype), "torch": torch.__version__,
                "cpu_capability": torch.backends.cpu.get_cpu_capability()}

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cpu", dtype=self.autocast_dtype)

    def _compile(self, path: Path, frame: Tensor, inputs: list[Tensor], key: dict) -> None:
        """Export and AOT-compile the step into ``path`` (written atomically), with its key beside it."""
        from torch._inductor import aoti_compile_and_package

        from ..export import TrackingStep

        remove_stale_temporaries(self.folder, _BUILD_PREFIX)
        build = make_private_dir(self.folder, _BUILD_PREFIX)
        try:
            step = TrackingStep(self.method).eval()
            # Exported and compiled under the same autocast: the exported graph's dtype checks
            # assume it (compiling outside it fails them).
            with torch.no_grad(), self._autocast():
                program = torch.export.export(step, (frame, *inputs))
                built = aoti_compile_and_package(program, package_path=str(build / path.name),
                                                 inductor_configs={"freezing": True})
            os.replace(built, path)
        finally:
            shutil.rmtree(build, ignore_errors=True)
        write_text(path.with_suffix(".json"), json.dumps(key, indent=1) + "\n")

    def _load(self, frame: Tensor, inputs: list[Tensor]):
        """The package for these inputs: loaded from ``folder``, compiled into it first if missing."""
        from torch._inductor import aoti_load_package

        key = self.key(frame, inputs)
        name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        path = self.folder / f"{self.method.name}-{name}.pt2"
        start = time.perf_counter()
        how = "loaded"
        if not path.exists():
            self._compile(path, frame, inputs, key)
            how = "compiled"
        runner = aoti_load_package(str(path))
        self._count_compile(time.perf_counter() - start)
        self.packages[path] = how
        return runner

    def _step(self, frame: Tensor, inputs: list[Tensor]) -> tuple[Tensor, ...]:
        frame = frame.contiguous()  # inputs are (tracked_input_tensors); the package assumes its strides
        signature = tuple((tuple(t.shape), t.dtype) for t in (frame, *inputs))
        runner = self._runners.get(signature)
        if runner is None:
            runner = self._runners[signature] = self._load(frame, inputs)
        return runner(frame, *inputs)
