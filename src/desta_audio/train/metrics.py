"""Training metrics: a CSV (always), TensorBoard (when installed), and a loss-curve PNG at the end."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

COLUMNS = ["step", "split", "epoch", "loss", "lr", "grad_norm", "samples", "samples_per_s", "tokens_per_s",
           "accuracy", "elapsed_s"]


class MetricsWriter:
    """Appends one row per logged event; on resume, rows after the checkpoint's step are dropped first."""

    def __init__(self, directory: str | Path, *, resume_step: int | None = None, tensorboard: bool = True) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.directory / "metrics.csv"
        kept: list[dict[str, str]] = []
        if resume_step is not None and self.csv_path.exists():
            with open(self.csv_path, newline="", encoding="utf-8") as handle:
                kept = [row for row in csv.DictReader(handle) if int(row["step"]) <= resume_step]
        # Rewritten through a temporary file: a run killed mid-rewrite must not lose the rows it keeps.
        temporary = self.csv_path.with_name(self.csv_path.name + ".tmp")
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(kept)
        os.replace(temporary, self.csv_path)
        self._handle = open(self.csv_path, "a", newline="", encoding="utf-8")
        self._csv = csv.DictWriter(self._handle, fieldnames=COLUMNS, extrasaction="ignore")
        self._tensorboard = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # TensorBoard drops events at or after purge_step; the checkpoint's own step is kept, as in the CSV.
                purge_step = None if resume_step is None else resume_step + 1
                self._tensorboard = SummaryWriter(str(self.directory / "tensorboard"), purge_step=purge_step)
            except ImportError:  # optional: the CSV and the PNG carry the same numbers
                log.info("tensorboard is not installed; metrics go to %s only", self.csv_path)

    def write(self, row: dict[str, Any]) -> None:
        self._csv.writerow({k: _format(v) for k, v in row.items()})
        self._handle.flush()
        if self._tensorboard is not None:
            for name, value in row.items():
                if name not in ("step", "split") and isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(f"{row['split']}/{name}", value, row["step"])

    def close(self) -> None:
        self._handle.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


def _format(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def read_metrics(csv_path: str | Path) -> list[dict[str, str]]:
    with open(csv_path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def plot_loss_curve(csv_path: str | Path, png_path: str | Path) -> Path | None:
    """Training loss per step (and validation loss where measured) -> PNG. None when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    rows = read_metrics(csv_path)
    series: dict[str, tuple[list[int], list[float]]] = {}
    for row in rows:
        if row.get("loss"):
            steps, losses = series.setdefault(row["split"], ([], []))
            steps.append(int(row["step"]))
            losses.append(float(row["loss"]))
    if not series:
        return None
    figure, axes = plt.subplots(figsize=(7, 4))
    for split, (steps, losses) in series.items():
        axes.plot(steps, losses, marker="o" if split != "train" else None, label=split)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss (response tokens)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(png_path, dpi=120)
    plt.close(figure)
    return Path(png_path)
