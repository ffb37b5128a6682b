"""The CIFAR python-pickle family (CIFAR-100, CIFAR-10): a folder of pickled dicts, each
holding ``data`` (uint8 [N, 3072], CHW order) and the labels under ``label_key``, with the
class names in a meta file. ``--data`` names the folder or its parent; ``--download`` fetches
the official archive.

numpy and torch are imported inside the functions that read (see ``spec.py``).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ignite_rn50.data.spec import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    DatasetSpec,
    Download,
    ImageSet,
    ReadOptions,
    Stats,
)
from ignite_rn50.errors import UserError, path_problem

if TYPE_CHECKING:
    import numpy as np

# mmcls resnet50_8xb16_cifar10 normalises with these
CIFAR10_MEAN, CIFAR10_STD = (125.307, 122.961, 113.8575), (51.5865, 50.847, 51.255)


@dataclass(frozen=True)
class PickledCifar(DatasetSpec):
    """One dataset of the family; its fields say where its files are and what they hold."""

    name: str  # the --dataset value
    title: str
    folder: str  # the folder the archive extracts to
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    names_key: str  # the class names' key in the meta file
    label_key: str
    num_classes: int
    mean: Stats  # per channel on 0-255 RGB (mmcls's numbers)
    std: Stats
    download: Download  # type: ignore[misc]
    image_size: int = 32

    flip: ClassVar[bool] = True

    @property
    def stats(self) -> tuple[Stats, Stats]:  # type: ignore[override]
        return self.mean, self.std

    @property
    def data_help(self) -> str:  # type: ignore[override]
        return f"the folder that holds {self.folder}/"

    def present(self, root: Path) -> bool:
        return _has_files(self, root / self.folder)

    def locate(self, data: str | None) -> Path:
        if data is None:
            raise UserError(f"--data is required for --dataset {self.name}")
        return locate(self, data)

    def read(self, split: str, where: Path | None, options: ReadOptions,
             train: ImageSet | None = None) -> ImageSet:
        assert where is not None
        return load_files(self, where, self.train_files if split == "train" else self.test_files)

    def count_classes(self, where: Path | None, options: ReadOptions) -> int:
        return self.num_classes



def _has_files(spec: PickledCifar, folder: Path) -> bool:
    return all((folder / name).is_file() for name in (*spec.train_files, *spec.test_files))


def _other_dataset_in(spec: PickledCifar, path: Path) -> str:
    """' (it holds CIFAR-10: pass --dataset cifar10)' when another known dataset is there."""
    for other in PICKLED:
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
        others = [o for o in PICKLED if o.label_key != spec.label_key
                  and o.label_key in obj]
        hint = (f" ({others[0].title} files have '{others[0].label_key}': pass --dataset "
                f"{others[0].name})") if others else ""
        raise UserError(f"{file} lacks {', '.join(missing)}: not a {spec.title} file{hint}; "
                        f"pass the {spec.folder} folder")


def _array(file: Path, obj: dict, key: str) -> np.ndarray:
    import numpy as np

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
    import numpy as np

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
    import numpy as np
    import torch

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
    import torch

    parts = [load_split(spec, folder / name) for name in names]
    images, labels = parts[0].images, parts[0].labels
    if len(parts) > 1:
        images, labels = torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts])
    return ImageSet(images, labels, spec.num_classes, spec.mean, spec.std,
                    class_names(spec, folder), spec.flip)


def class_names(spec: PickledCifar, folder: Path) -> tuple[str, ...] | None:
    """The names in the meta file (fine_label_names, label_names), or None where the file is
    absent or does not hold them: the names only label reports, nothing depends on them."""
    try:
        with open(folder / spec.meta_file, "rb") as fh:
            names = pickle.load(fh, encoding="latin1").get(spec.names_key)
    except Exception:  # noqa: BLE001 - no usable meta file: reports show indices
        return None
    if not isinstance(names, list) or len(names) != spec.num_classes:
        return None
    return tuple(str(n) for n in names)


CIFAR100 = PickledCifar(
    name="cifar100", title="CIFAR-100", folder="cifar-100-python",
    train_files=("train",), test_files=("test",), meta_file="meta",
    names_key="fine_label_names", label_key="fine_labels", num_classes=100,
    mean=CIFAR100_MEAN, std=CIFAR100_STD,
    download=Download(url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                      archive="cifar-100-python.tar.gz", md5="eb9058c3a382ffc7106e4002c42a8d85",
                      folder="cifar-100-python"))
CIFAR10 = PickledCifar(
    name="cifar10", title="CIFAR-10", folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)), test_files=("test_batch",),
    meta_file="batches.meta", names_key="label_names", label_key="labels", num_classes=10,
    mean=CIFAR10_MEAN, std=CIFAR10_STD,
    download=Download(url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                      archive="cifar-10-python.tar.gz", md5="c58f30108f718f92721af3b95e74349a",
                      folder="cifar-10-batches-py"))
PICKLED = (CIFAR100, CIFAR10)  # a folder of one named in the other's errors
