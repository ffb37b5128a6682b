"""Datasets as plain uint8 tensors: CIFAR-100 from its python pickles, or a learnable synthetic set.

Both come out as an ``ImageSet`` (uint8 ``[N, 3, H, W]`` images, int64 labels), which either
input pipeline (see ``pipeline.py``) can feed to the model.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ignite_rn50.errors import UserError

log = logging.getLogger(__name__)

CIFAR_FOLDER = "cifar-100-python"
CIFAR_CLASSES = 100
# mmcls resnet50_8xb16_cifar100: statistics on 0-255 RGB.
CIFAR_MEAN = (129.304, 124.070, 112.434)
CIFAR_STD = (68.170, 65.392, 70.418)


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8 [N, 3, H, W]
    labels: torch.Tensor  # int64 [N]
    num_classes: int

    def __len__(self) -> int:
        return int(self.labels.numel())

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])


# --- CIFAR-100 ------------------------------------------------------------------------------

def locate_cifar(path: str | Path) -> Path:
    """Accept the cifar-100-python folder itself or the folder that holds it."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"--data {path} does not exist; pass the folder that holds "
                        f"{CIFAR_FOLDER}/ (or add --download to fetch it there)")
    if not path.is_dir():
        raise UserError(f"--data {path} is a file; pass the folder that holds {CIFAR_FOLDER}/")
    for candidate in (path, path / CIFAR_FOLDER):
        if (candidate / "train").is_file() and (candidate / "test").is_file():
            return candidate
    try:
        listing = sorted(p.name for p in path.iterdir())[:8]
    except PermissionError:
        raise UserError(f"--data {path} is not readable (permission denied); fix its "
                        "permissions or pass another folder") from None
    found = ", ".join(listing) if listing else "nothing"
    raise UserError(f"--data {path} holds no CIFAR-100 (expected {CIFAR_FOLDER}/train and "
                    f"{CIFAR_FOLDER}/test, found {found}); pass the folder that holds "
                    f"{CIFAR_FOLDER}/, or add --download")


def _read_pickle(file: Path) -> dict:
    try:
        with open(file, "rb") as fh:
            obj = pickle.load(fh, encoding="latin1")
    except PermissionError:
        raise UserError(f"{file} is not readable (permission denied); fix its permissions") \
            from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            ImportError, IndexError, MemoryError, UnicodeDecodeError) as exc:
        raise UserError(f"{file} is truncated or not a CIFAR-100 pickle ({type(exc).__name__}); "
                        "re-download it (--download into an empty folder) or replace the file") \
            from None
    if not isinstance(obj, dict):
        raise UserError(f"{file} holds a {type(obj).__name__}, not a CIFAR-100 dict; replace "
                        "the file")
    return obj


def load_cifar_split(file: Path) -> ImageSet:
    """Validate structure (keys, shapes, label range); the MD5 is only checked on download."""
    obj = _read_pickle(file)
    missing = [k for k in ("data", "fine_labels") if k not in obj]
    if missing:
        raise UserError(f"{file} lacks {', '.join(missing)}: not a CIFAR-100 file (CIFAR-10 "
                        "files have 'labels'); pass the cifar-100-python folder")
    data = np.asarray(obj["data"])
    labels = np.asarray(obj["fine_labels"])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] == 0:
        raise UserError(f"{file}: 'data' has shape {tuple(data.shape)}, expected (N, 3072) "
                        "with N > 0; replace the file")
    if data.dtype != np.uint8:
        raise UserError(f"{file}: 'data' is {data.dtype}, expected uint8; replace the file")
    if labels.shape != (data.shape[0],):
        raise UserError(f"{file}: {labels.size} labels for {data.shape[0]} images; replace the "
                        "file")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 \
            or labels.max() >= CIFAR_CLASSES:
        raise UserError(f"{file}: labels must be integers in 0..{CIFAR_CLASSES - 1}, found "
                        f"{labels.min()}..{labels.max()}; replace the file")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return ImageSet(images, torch.from_numpy(labels.astype(np.int64)), CIFAR_CLASSES)


def download_cifar(root: Path) -> None:
    """torchvision's downloader (MD5-checked); offline it fails with where to put the files."""
    from torchvision.datasets import CIFAR100

    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--data {root} cannot be created ({exc.strerror}); pass a writable "
                        "folder") from None
    try:
        CIFAR100(str(root), train=True, download=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        reason = getattr(exc, "reason", None) or exc
        raise UserError(f"could not download CIFAR-100 from {CIFAR100.url} ({reason}); "
                        f"download {CIFAR100.filename} by hand and extract it into {root} "
                        f"(giving {root / CIFAR_FOLDER}/train, test, meta)") from None


def ensure_cifar(path: str | Path) -> None:
    """--download: fetch CIFAR-100 unless it is already there (one process per job does it)."""
    path = Path(path).expanduser()
    root = path.parent if path.name == CIFAR_FOLDER else path
    has = (root / CIFAR_FOLDER / "train").is_file() and (root / CIFAR_FOLDER / "test").is_file()
    if not has:
        log.info("downloading CIFAR-100 into %s", root)
        download_cifar(root)


def load_cifar(path: str | Path) -> tuple[ImageSet, ImageSet]:
    folder = locate_cifar(path)
    return load_cifar_split(folder / "train"), load_cifar_split(folder / "test")


# --- synthetic --------------------------------------------------------------------------------

def make_synthetic(size: int, num_classes: int, image_size: int, *, split_seed: int,
                   pattern_seed: int = 1234) -> ImageSet:
    """Learnable images: one smooth colour pattern per class (same patterns in every split),
    plus per-image noise and brightness jitter, so accuracy far above chance is reachable
    in a few CPU epochs while the task is not trivial."""
    pattern_gen = torch.Generator().manual_seed(pattern_seed)
    coarse = torch.rand(num_classes, 3, 4, 4, generator=pattern_gen) * 2 - 1
    patterns = torch.nn.functional.interpolate(coarse, size=(image_size, image_size),
                                               mode="bilinear", align_corners=False)
    gen = torch.Generator().manual_seed(split_seed)
    labels = torch.randint(0, num_classes, (size,), generator=gen)
    noise = torch.randn(size, 3, image_size, image_size, generator=gen)
    brightness = torch.rand(size, 1, 1, 1, generator=gen) * 40 - 20
    images = 128 + 70 * patterns[labels] + 45 * noise + brightness
    return ImageSet(images.clamp(0, 255).round().to(torch.uint8), labels, num_classes)


def load_datasets(dataset: str, data: str | None, *, train_size: int, test_size: int,
                  num_classes: int, image_size: int) -> tuple[ImageSet, ImageSet]:
    if dataset == "synthetic":
        return (make_synthetic(train_size, num_classes, image_size, split_seed=1),
                make_synthetic(test_size, num_classes, image_size, split_seed=2))
    if data is None:
        raise UserError("--data is required for --dataset cifar100")
    return load_cifar(data)


def num_classes(dataset: str, synthetic_classes: int) -> int:
    return CIFAR_CLASSES if dataset == "cifar100" else synthetic_classes


def load_test_set(dataset: str, data: str | None, *, test_size: int, num_classes: int,
                  image_size: int) -> ImageSet:
    """The test split alone (evaluation of a checkpoint reads nothing else)."""
    if dataset == "synthetic":
        return make_synthetic(test_size, num_classes, image_size, split_seed=2)
    if data is None:
        raise UserError("--data is required for --dataset cifar100")
    return load_cifar_split(locate_cifar(data) / "test")
