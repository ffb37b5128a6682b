"""What the parity driver needs around mmcls 0.24: a small real data set in the
cifar-100-python layout, mmcls configs written for it, and mmcls's own tools run on it.

mmcls's CIFAR classes check the official files' MD5s; these files are not the official
ones, so ``python harness.py TOOL ARGS...`` runs ``mmcls/.mim/tools/TOOL`` with both checks
answered "present" (here, in the harness only; mmcls itself is not changed).
"""

from __future__ import annotations

import os
import pickle
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def mmcls_root() -> Path:
    import mmcls

    return Path(mmcls.__file__).parent / ".mim"


def write_digits(root: Path, n_train: int, n_test: int, split_seed: int = 0) -> Path:
    """scikit-learn's bundled handwritten digits (1,797 8x8 images, 0..16) as real
    cifar-100-python pickles: scaled to 0..255, each pixel repeated 4x4 to 32x32, grey in all
    three channels, labels 0..9 of the 100 classes."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.RandomState(split_seed).permutation(len(digits.target))
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    grey = np.clip(np.rint(digits.images * 255 / 16), 0, 255).astype(np.uint8)
    big = grey.repeat(4, axis=1).repeat(4, axis=2)
    rows = np.repeat(big[:, None], 3, axis=1).reshape(len(big), -1)
    for name, idx in (("train", order[:n_train]), ("test", order[n_train:n_train + n_test])):
        labels = [int(v) for v in digits.target[idx]]
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": rows[idx], "fine_labels": labels,
                         "coarse_labels": [v // 5 for v in labels],
                         "filenames": [f"{name}_{i}.png" for i in range(len(idx))],
                         "batch_label": name}, fh)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)],
                     "coarse_label_names": [f"s{i}" for i in range(20)]}, fh)
    return root


def mmcls_config(path: Path, data: Path, *, depth: int = 18, batch: int = 16,
                 epochs: int = 4, extra: str = "") -> Path:
    """resnet50_8xb16_cifar100 of mmcls's own configs, on ``data``, at ``depth``, every
    iteration logged, one worker (0 fails: mmcls always asks for persistent workers), the
    last epoch's checkpoint only; ``extra``: more config lines (lr_config, optimizer, ...)."""
    base = mmcls_root() / "configs" / "resnet" / "resnet50_8xb16_cifar100.py"
    width = 512 if depth < 50 else 2048
    path.write_text(f"""_base_ = [{str(base)!r}]
model = dict(backbone=dict(depth={depth}), head=dict(in_channels={width}))
data = dict(samples_per_gpu={batch}, workers_per_gpu=1,
            train=dict(data_prefix={str(data)!r}), val=dict(data_prefix={str(data)!r}),
            test=dict(data_prefix={str(data)!r}))
runner = dict(max_epochs={epochs})
log_config = dict(interval=1, hooks=[dict(type='TextLoggerHook')])
checkpoint_config = dict(interval={epochs})
{extra}
""")
    return path


def run_tool(tool: str, args: list[str], cwd: Path, threads: int = 2
             ) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, __file__, tool, *args], cwd=cwd, env=env,
                          capture_output=True, text=True)


def run_ours(module: str, args: list[str], threads: int = 2) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO),
               PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True)


def _main(argv: list[str]) -> None:
    import mmcls.datasets.cifar as cifar

    cifar.check_integrity = lambda fpath, md5=None: os.path.isfile(fpath)
    cifar.CIFAR10._check_integrity = lambda self: True
    tool = mmcls_root() / "tools" / argv[0]
    sys.argv = [str(tool), *argv[1:]]
    runpy.run_path(str(tool), run_name="__main__")


if __name__ == "__main__":
    _main(sys.argv[1:])
