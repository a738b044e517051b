"""What a training run shows of itself: ``metrics.csv`` (one row per logged step) and ``loss.png``.

``metrics.csv`` has the columns ``step, loss, lr, seconds`` (seconds: wall time since this
process started training, so it restarts near 0 after a resume). Rows are appended as training
goes; a resumed run first drops the rows after its checkpoint's step, as a killed run logged
steps that the resumed one does again. ``loss.png`` (loss against step, log-scale loss axis when
every loss is positive) is redrawn from the CSV every ``plot_every`` logged rows and at the end,
always through a temporary file and a rename, so a reader never sees half a picture.

matplotlib is optional (the ``test``/``bench`` extras): without it the CSV is still written and
the first attempt to draw says once, on stderr, why there is no ``loss.png``.
"""
from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

from ..atomic import atomic_path, write_text

COLUMNS = ("step", "loss", "lr", "seconds")


class RunLog:
    """Appends ``(step, loss, lr, seconds)`` rows to ``<folder>/metrics.csv`` and draws ``loss.png``."""

    def __init__(self, folder: str | Path, *, plot_every: int = 10):
        if plot_every < 1:
            raise ValueError(f"RunLog: plot_every must be >= 1, got {plot_every}")
        self.csv_path = Path(folder) / "metrics.csv"
        self.plot_path = Path(folder) / "loss.png"
        self.plot_every = plot_every
        self._rows_since_plot = 0
        self._warned_no_matplotlib = False

    def rows(self) -> list[dict[str, float]]:
        """The rows written so far, as floats (``step`` as int)."""
        if not self.csv_path.is_file():
            return []
        with open(self.csv_path, newline="") as handle:
            return [{"step": int(r["step"]), **{k: float(r[k]) for k in COLUMNS[1:]}} for r in csv.DictReader(handle)]

    def truncate(self, step: int) -> None:
        """Keep only the rows up to ``step`` (a resumed run redoes the later ones)."""
        if not self.csv_path.is_file():
            return
        kept = [r for r in self.rows() if r["step"] <= step]
        write_text(self.csv_path, _csv_text(kept, header=True))

    def append(self, step: int, loss: float, lr: float, seconds: float) -> None:
        new_file = not self.csv_path.is_file()
        with open(self.csv_path, "a", newline="") as handle:
            handle.write(_csv_text([{"step": step, "loss": loss, "lr": lr, "seconds": seconds}], header=new_file))
        self._rows_since_plot += 1
        if self._rows_since_plot >= self.plot_every:
            self.plot()

    def plot(self) -> bool:
        """Redraw ``loss.png`` from the CSV; False (said once on stderr) without matplotlib or rows."""
        self._rows_since_plot = 0
        rows = self.rows()
        if not rows:
            return False
        try:
            import matplotlib  # noqa: F401  (optional: the test/bench extras)
        except ImportError:
            if not self._warned_no_matplotlib:
                print(f"vos-train: {self.plot_path.name} not drawn: matplotlib is not installed "
                      f"(pip install matplotlib); {self.csv_path.name} holds every figure", file=sys.stderr)
                self._warned_no_matplotlib = True
            return False
        # A bare Figure, not pyplot: savefig renders PNG with Agg, needs no display, and leaves the
        # backend that the caller (a notebook, say) chose untouched.
        from matplotlib.figure import Figure

        steps = [r["step"] for r in rows]
        losses = [r["loss"] for r in rows]
        figure = Figure(figsize=(6, 3.5))
        axes = figure.subplots()
        axes.plot(steps, losses, linewidth=1.0)
        if all(math.isfinite(v) and v > 0 for v in losses):
            axes.set_yscale("log")
        axes.set_xlabel("step")
        axes.set_ylabel("training loss")
        axes.grid(True, alpha=0.3)
        figure.tight_layout()
        with atomic_path(self.plot_path) as tmp:
            figure.savefig(tmp, format="png", dpi=100)  # the temporary's name ends in .tmp: say the format
        return True


def _csv_text(rows: list[dict], *, header: bool) -> str:
    lines = [",".join(COLUMNS)] if header else []
    lines += [",".join(_cell(r[c]) for c in COLUMNS) for r in rows]
    return "".join(line + "\n" for line in lines)


def _cell(value) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))
