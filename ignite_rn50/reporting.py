"""What a run leaves for people to read: summary.json and curves.png (written by rank 0).

The log and the environment lines are in ``environment.py``, experiment trackers
(TensorBoard, ClearML) in ``trackers.py``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import ignite.distributed as idist

from ignite_rn50 import rundir
from ignite_rn50.events import RunEvents
from ignite_rn50.loop import Loop, RunRecord


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """A reader (or a kill) never sees half a file: write beside it, then rename. A full disk
    leaves the previous file as it was and is one line."""
    text = json.dumps(data, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if not rundir.is_out_of_space(exc, path.parent, len(text)):
            raise
        raise rundir.out_of_space(path.parent, path.name, len(text),
                                  f"{path.name} keeps its previous version") from None


def summary_facts(loop: Loop) -> dict[str, Any]:
    """What summary.json says of the run itself (measurements are added as it goes)."""
    cfg, rt, parts = loop.cfg, loop.rt, loop.parts
    return {"world_size": rt.processes, "global_batch_size": loop.global_batch,
            "device": str(rt.device), "device_type": rt.device.type,
            "amp": parts.precision.describe(), "precision": parts.precision.explain(),
            "optimizer": type(parts.optimizer).__name__, "depth": cfg.depth,
            "dataset": cfg.dataset, "parameters": sum(p.numel() for p in parts.model.parameters()),
            "epochs": cfg.epochs, "lr": cfg.lr, "lr_policy": cfg.lr_policy,
            "input_pipeline": loop.data.kind, "graph": cfg.graph}


@dataclass
class RunSummary:
    """summary.json: the run's fixed facts plus what it has measured so far; rewritten
    atomically by rank 0 after every epoch's checkpoints (``EPOCH_SAVED``) and at the end."""

    path: Path
    facts: dict[str, Any]
    record: RunRecord
    fps: Callable[[], float | None]
    best_checkpoint: Callable[[], Path | None]
    started: float  # time.perf_counter() at the start of this process

    @classmethod
    def attach(cls, loop: Loop, fps: Callable[[], float | None],
               best_checkpoint: Callable[[], Path | None]) -> RunSummary:
        summary = cls(loop.rt.out / "summary.json", summary_facts(loop), loop.record, fps,
                      best_checkpoint, loop.rt.started)
        loop.trainer.add_event_handler(RunEvents.EPOCH_SAVED, summary.write)
        return summary

    def write(self, engine: Any) -> None:
        if idist.get_rank() != 0:
            return
        history = self.record.history
        last = history[-1] if history else {}
        state = engine.state
        best = self.best_checkpoint()
        write_json_atomic(self.path, {
            **self.facts,
            "fps": self.fps(), "data_wait_share": last.get("data_wait"),
            "best_top1": self.record.best_top1, "final_top1": last.get("val_top1"),
            "final_top5": last.get("val_top5"), "final_loss": last.get("train_loss"),
            "final_val_loss": last.get("val_loss"),
            "epochs_completed": last.get("epoch", 0), "iterations": state.iteration,
            "step_dtype": str(getattr(state, "step_dtype", None)),
            "step_device": str(getattr(state, "step_device", None)),
            "step_channels_last": getattr(state, "step_channels_last", None),
            "best_checkpoint": str(best) if best else None,
            "e2e_seconds": time.perf_counter() - self.started,
            "history": history})


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
    try:
        fig.savefig(path, dpi=90)
    except OSError as exc:
        if not rundir.is_out_of_space(exc, path.parent, 1_000_000):
            raise
        raise rundir.out_of_space(path.parent, path.name, 1_000_000, "the checkpoints are "
                                  "intact") from None
    finally:
        plt.close(fig)
