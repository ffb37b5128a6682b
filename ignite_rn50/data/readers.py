"""Datasets as plain uint8 tensors: the CIFAR pickles a ``datasets.PickledCifar`` spec names,
or a learnable synthetic set.

Both come out as an ``ImageSet`` (uint8 ``[N, 3, H, W]`` images, int64 labels), which either
input pipeline (see ``pipelines.py``) can feed to the model.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ignite_rn50.data.registry import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    DatasetSpec,
    PickledCifar,
    Synthetic,
    file_datasets,
)
from ignite_rn50.errors import UserError, path_problem

log = logging.getLogger(__name__)


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8 [N, 3, H, W]
    labels: torch.Tensor  # int64 [N]
    num_classes: int
    mean: tuple[float, float, float] = CIFAR100_MEAN  # the dataset's statistics, 0-255 RGB
    std: tuple[float, float, float] = CIFAR100_STD
    class_names: tuple[str, ...] | None = None  # by label index, where the dataset names them

    def __len__(self) -> int:
        return int(self.labels.numel())

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])


@dataclass(frozen=True)
class SyntheticSizes:
    """The --synthetic-* options."""

    train: int
    test: int
    classes: int
    image_size: int


# --- the CIFAR pickle family -------------------------------------------------------------------

def _has_files(spec: PickledCifar, folder: Path) -> bool:
    return all((folder / name).is_file() for name in (*spec.train_files, *spec.test_files))


def _other_dataset_in(spec: PickledCifar, path: Path) -> str:
    """' (it holds CIFAR-10: pass --dataset cifar10)' when another known dataset is there."""
    for other in file_datasets():
        if other.name != spec.name and any(_has_files(other, c) for c in (path,
                                                                          path / other.folder)):
            return f" (it holds {other.title}: pass --dataset {other.name})"
    return ""


def locate(spec: PickledCifar, path: str | Path) -> Path:
    """Accept the dataset's own folder (cifar-100-python, ...) or the folder that holds it."""
    path = Path(path).expanduser()
    problem = path_problem(path)
    if problem:
        raise UserError(f"--data {path} {problem}; pass the folder that holds {spec.folder}/")
    if not path.exists():
        raise UserError(f"--data {path} does not exist; pass the folder that holds "
                        f"{spec.folder}/ (or add --download to fetch it there)")
    if not path.is_dir():
        raise UserError(f"--data {path} is a file; pass the folder that holds {spec.folder}/")
    for candidate in (path, path / spec.folder):
        if _has_files(spec, candidate):
            return candidate
    _refuse_incomplete(spec, path)
    try:
        listing = sorted(p.name for p in path.iterdir())[:8]
    except PermissionError:
        raise UserError(f"--data {path} is not readable (permission denied); fix its "
                        "permissions or pass another folder") from None
    found = ", ".join(listing) if listing else "nothing"
    expected = ", ".join(f"{spec.folder}/{name}" for name in (spec.train_files[0],
                                                               *spec.test_files))
    raise UserError(f"--data {path} holds no {spec.title} (expected {expected}, found "
                    f"{found}){_other_dataset_in(spec, path)}; pass the folder that holds "
                    f"{spec.folder}/, or add --download")


def _refuse_incomplete(spec: PickledCifar, path: Path) -> None:
    """The dataset's folder that is a broken link, or that holds some of its files but not
    all: one line naming what is wrong or missing."""
    own = path / spec.folder
    problem = path_problem(own)
    if problem:
        raise UserError(f"--data {path}: {spec.folder} {problem}; fix the link or pass the "
                        f"folder that holds the real {spec.folder}/")
    names = (*spec.train_files, *spec.test_files)
    for candidate in (own, path):
        present = [name for name in names if (candidate / name).is_file()]
        if not present:
            continue
        missing = [name + (f" ({why})" if (why := path_problem(candidate / name)) else "")
                   for name in names if name not in present]
        raise UserError(f"--data {path}: {candidate} holds {spec.title} without "
                        f"{', '.join(missing)}; restore the missing files, or re-download "
                        f"(--download into an empty folder)")


def _read_pickle(spec: PickledCifar, file: Path) -> dict:
    try:
        with open(file, "rb") as fh:
            obj = pickle.load(fh, encoding="latin1")
    except OSError as exc:
        raise UserError(f"{file} is not readable ({exc.strerror}); fix its permissions or "
                        "replace the file") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            ImportError, IndexError, MemoryError, UnicodeDecodeError) as exc:
        raise UserError(f"{file} is truncated or not a {spec.title} pickle "
                        f"({type(exc).__name__}); re-download it (--download into an empty "
                        "folder) or replace the file") from None
    if not isinstance(obj, dict):
        raise UserError(f"{file} holds a {type(obj).__name__}, not a {spec.title} dict; replace "
                        "the file")
    return obj


def _check_keys(spec: PickledCifar, file: Path, obj: dict) -> None:
    missing = [k for k in ("data", spec.label_key) if k not in obj]
    if missing:
        others = [o for o in file_datasets() if o.label_key != spec.label_key
                  and o.label_key in obj]
        hint = (f" ({others[0].title} files have '{others[0].label_key}': pass --dataset "
                f"{others[0].name})") if others else ""
        raise UserError(f"{file} lacks {', '.join(missing)}: not a {spec.title} file{hint}; "
                        f"pass the {spec.folder} folder")


def _array(file: Path, obj: dict, key: str) -> np.ndarray:
    try:
        return np.asarray(obj[key])
    except (ValueError, TypeError) as exc:  # ragged lists: not one array
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise UserError(f"{file}: '{key}' is not an array ({first}); replace the file") \
            from None


def _label_problem(raw: object, labels: np.ndarray, classes: int) -> str | None:
    """The first label that is not an integer in 0..classes-1, with its index; None if all
    are. ``raw``: the labels as the file holds them (numpy would turn a list with a None, a
    string or a float in it into one dtype for all, and a True into 1)."""
    if isinstance(raw, np.ndarray) and labels.dtype.kind in "iu":
        bad = np.flatnonzero((labels < 0) | (labels >= classes)).tolist()
        return f"found {labels[bad[0]]} at index {bad[0]}" if bad else None
    values = raw.tolist() if isinstance(raw, np.ndarray) else list(raw)  # type: ignore
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < classes:
            return f"found {v!r} at index {i}"
    return None


def load_split(spec: PickledCifar, file: Path) -> ImageSet:
    """Validate structure (keys, shapes, label range); the MD5 is only checked on download."""
    obj = _read_pickle(spec, file)
    _check_keys(spec, file, obj)
    data = _array(file, obj, "data")
    labels = _array(file, obj, spec.label_key)
    side = spec.image_size
    if data.ndim != 2 or data.shape[1] != 3 * side * side or data.shape[0] == 0:
        raise UserError(f"{file}: 'data' has shape {tuple(data.shape)}, expected (N, "
                        f"{3 * side * side}) with N > 0; replace the file")
    if data.dtype != np.uint8:
        raise UserError(f"{file}: 'data' is {data.dtype}, expected uint8; replace the file")
    if labels.shape != (data.shape[0],):
        raise UserError(f"{file}: {labels.size} labels for {data.shape[0]} images; replace the "
                        "file")
    problem = _label_problem(obj[spec.label_key], labels, spec.num_classes)
    if problem:
        raise UserError(f"{file}: labels must be integers in 0..{spec.num_classes - 1}, "
                        f"{problem}; replace the file")
    images = torch.from_numpy(data.reshape(-1, 3, side, side).copy())
    return ImageSet(images, torch.from_numpy(labels.astype(np.int64)), spec.num_classes,
                    spec.mean, spec.std)


def load_files(spec: PickledCifar, folder: Path, names: tuple[str, ...]) -> ImageSet:
    parts = [load_split(spec, folder / name) for name in names]
    if len(parts) == 1:
        return parts[0]
    return ImageSet(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]),
                    spec.num_classes, spec.mean, spec.std)


def download(spec: PickledCifar, root: Path) -> None:
    """torchvision's downloader (MD5-checked); offline it fails with where to put the files."""
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--data {root} cannot be created ({exc.strerror}); pass a writable "
                        "folder") from None
    try:
        download_and_extract_archive(spec.url, str(root), filename=spec.archive, md5=spec.md5)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        reason = getattr(exc, "reason", None) or exc
        raise UserError(f"could not download {spec.title} from {spec.url} ({reason}); "
                        f"download {spec.archive} by hand and extract it into {root} (giving "
                        f"{root / spec.folder}/)") from None


def ensure_files(spec: PickledCifar, path: str | Path) -> None:
    """--download: fetch the dataset unless it is already there (one process per job)."""
    path = Path(path).expanduser()
    root = path.parent if path.name == spec.folder else path
    if not _has_files(spec, root / spec.folder):
        log.info("downloading %s into %s", spec.title, root)
        download(spec, root)


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


# --- by spec --------------------------------------------------------------------------------------

def num_classes(spec: DatasetSpec, sizes: SyntheticSizes) -> int:
    return sizes.classes if isinstance(spec, Synthetic) else spec.num_classes


def load_test_set(spec: DatasetSpec, data: str | None, sizes: SyntheticSizes) -> ImageSet:
    """The test split alone (evaluating a checkpoint reads nothing else)."""
    if isinstance(spec, Synthetic):
        return make_synthetic(sizes.test, sizes.classes, sizes.image_size, split_seed=2)
    return load_files(spec, locate(spec, _required(spec, data)), spec.test_files)


def load_datasets(spec: DatasetSpec, data: str | None,
                  sizes: SyntheticSizes) -> tuple[ImageSet, ImageSet]:
    if isinstance(spec, Synthetic):
        return (make_synthetic(sizes.train, sizes.classes, sizes.image_size, split_seed=1),
                load_test_set(spec, data, sizes))
    folder = locate(spec, _required(spec, data))
    return load_files(spec, folder, spec.train_files), load_files(spec, folder, spec.test_files)


def _required(spec: PickledCifar, data: str | None) -> str:
    if data is None:
        raise UserError(f"--data is required for --dataset {spec.name}")
    return data
