"""curves.png: loss, validation accuracy and lr per epoch, for people to look at."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ignite_rn50.outputs.rundir import is_out_of_space, out_of_space


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
        if not is_out_of_space(exc, path.parent, 1_000_000):
            raise
        raise out_of_space(path.parent, path.name, 1_000_000, "the checkpoints are "
                                  "intact") from None
    finally:
        plt.close(fig)
