"""What a run tells people: log lines, summary.json, curves.png (rank 0 only).

Experiment trackers (TensorBoard, ClearML) live in ``trackers.py``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger("ignite_rn50")


def setup_logging(rank: int, log_file: Path | None) -> None:
    """Rank 0 logs INFO to the console and to the run's text log; other ranks warnings only."""
    log.handlers.clear()
    log.propagate = False
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt if rank == 0 else logging.Formatter(f"[rank {rank}] %(message)s"))
    log.addHandler(console)
    if log_file is not None:
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(fmt)
        log.addHandler(file_handler)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """A reader (or a kill) never sees half a file: write beside it, then rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


class RunRecord:
    """Per-epoch history; checkpointed with the run so curves cover a resumed run too."""

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        self.history = [r for r in self.history if r["epoch"] < row["epoch"]] + [row]

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(r) for r in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [dict(r) for r in state["history"]]

    @property
    def best_top1(self) -> float | None:
        values = [r["val_top1"] for r in self.history]
        return max(values) if values else None


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    axes[0].plot(epochs, [r["val_loss"] for r in history], "o-", label="val")
    axes[0].set_title("loss")
    axes[1].plot(epochs, [100 * r["val_top1"] for r in history], "o-", label="top-1")
    axes[1].plot(epochs, [100 * r["val_top5"] for r in history], "o-", label="top-5")
    axes[1].set_title("validation accuracy (%)")
    axes[2].plot(epochs, [r["lr"] for r in history], "o-", label="lr")
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
