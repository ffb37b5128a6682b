"""Pictures for the dashboards: a grid of images with a caption each (test images with their
true and predicted classes, mixed training images with their two strongest targets) and a
confusion matrix, drawn with matplotlib into RGB arrays that ClearML's ``report_image`` and
TensorBoard's ``add_image`` both take. Nothing here knows a tracker or a model."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

GRID_IMAGES = 16  # a 4 x 4 grid: enough to see what the model does, small on the dashboard


def _figure_array(fig) -> np.ndarray:
    """The figure as an H x W x 3 uint8 array (then closed)."""
    import matplotlib.pyplot as plt

    fig.canvas.draw()
    array = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return array


def displayable(images: torch.Tensor) -> np.ndarray:
    """Normalised N x C x H x W tensors as N x H x W x 3 floats in [0, 1], each image scaled
    to its own range (the input's mean and std need not be known; a mixed image stays
    readable)."""
    x = images.detach().float().cpu()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    low = x.amin(dim=(1, 2, 3), keepdim=True)
    high = x.amax(dim=(1, 2, 3), keepdim=True)
    x = (x - low) / (high - low).clamp_min(1e-8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def caption_grid(images: torch.Tensor, captions: Sequence[str], title: str) -> np.ndarray:
    """Up to GRID_IMAGES images in a square grid, each with its caption, as an RGB array."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    pictures = displayable(images[:GRID_IMAGES])
    n = len(pictures)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 1.8 * rows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(pictures[i], interpolation="nearest")
            ax.set_title(captions[i], fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _figure_array(fig)


def prediction_captions(labels: Sequence[int], predicted: Sequence[int],
                        names: Sequence[str]) -> list[str]:
    """'true cat / pred dog' (a check mark where they agree)."""
    return [f"true {names[t]}\npred {names[p]}" + (" \u2713" if t == p else " \u2717")
            for t, p in zip(labels, predicted, strict=True)]


def mixed_captions(targets: torch.Tensor, names: Sequence[str]) -> list[str]:
    """Soft targets [N, C]: the two strongest classes and their shares, '0.62 cat + 0.38 dog'."""
    top = targets.detach().float().cpu().topk(min(2, targets.shape[1]), dim=1)
    out = []
    for values, classes in zip(top.values.tolist(), top.indices.tolist(), strict=True):
        parts = [f"{v:.2f} {names[c]}" for v, c in zip(values, classes, strict=True) if v >= 0.005]
        out.append("\n+ ".join(parts))
    return out


def confusion_image(matrix: np.ndarray, names: Sequence[str], title: str) -> np.ndarray:
    """A confusion matrix (rows: true class, columns: predicted) as an RGB heat map; class
    names on the axes up to 30 classes."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = matrix.shape[0]
    side = min(3 + 0.25 * n, 14)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(matrix, cmap="Blues", interpolation="nearest")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=9)
    if n <= 30:
        ax.set_xticks(range(n), [str(x) for x in names], rotation=90, fontsize=7)
        ax.set_yticks(range(n), [str(x) for x in names], fontsize=7)
    fig.tight_layout()
    return _figure_array(fig)
