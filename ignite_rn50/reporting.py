"""What a run tells people: the environment it ran in, log lines, summary.json, curves.png
(rank 0 only).

Experiment trackers (TensorBoard, ClearML) live in ``trackers.py``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import ignite.distributed as idist
import torch
import torchvision

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


def command_line() -> str:
    """This process's command as the user typed it (``python -m pkg.mod`` shows as such)."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(".py") and "ignite_rn50" in Path(argv[0]).parts:
        argv = ["-m", f"ignite_rn50.{Path(argv[0]).stem}", *argv[1:]]
    return shlex.join([Path(sys.executable).name, *argv])


def installed_version(package: str, module: str) -> str | None:
    """A package's version without importing it (apex loads CUDA/NPU extensions); None when
    its module is not installed."""
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "installed (version unknown)"


def environment(device_info: dict[str, str], backend: str | None) -> dict[str, str]:
    """Everything a bug report starts with: command, versions, device, backend."""
    env = {"command": command_line(), "python": platform.python_version(),
           "torch": torch.__version__, "torchvision": torchvision.__version__}  # build tags too
    for package, module in (("pytorch-ignite", "ignite"), ("clearml", "clearml")):
        env[package] = installed_version(package, module) or "not installed"
    apex = installed_version("apex", "apex")
    env.update(device_info, **({"apex": apex} if apex else {}))
    env["backend"] = f"{backend} ({idist.get_world_size()} processes)" if backend else \
        "none (1 process)"
    return env


def log_environment(env: dict[str, str]) -> None:
    versions = ", ".join(f"{k} {env[k]}" for k in ("python", "torch", "torchvision",
                                                   "pytorch-ignite", "clearml", "torch_npu",
                                                   "cann", "apex") if k in env)
    log.info("command: %s", env["command"])
    log.info("versions: %s", versions)
    log.info("device: %s x %s, backend %s", env["device"], env["device_count"], env["backend"])


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


@dataclass
class RunSummary:
    """summary.json: the run's fixed facts plus what it has measured so far; rewritten
    atomically by rank 0 after every epoch and at the end."""

    path: Path
    facts: dict[str, Any]
    record: RunRecord
    fps: Callable[[], float | None]
    best_checkpoint: Callable[[], Path | None]
    started: float  # time.perf_counter() at the start of this process

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
    fig.savefig(path, dpi=90)
    plt.close(fig)
