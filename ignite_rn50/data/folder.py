"""Your own images: ``--dataset folder --data DIR`` reads ``DIR/train/<class>/<image>`` and
``DIR/val/<class>/<image>`` (``test/`` where there is no ``val/``), torchvision
``ImageFolder``'s and mmcls ``CustomDataset``'s layout.

Class names and order are ``ImageFolder``'s (sorted class folders of ``train/``), the files
are those it accepts by extension (hidden files ignored), and each image is read by
torchvision's loader (PIL, converted to RGB: grey, palette and RGBA images too), resized on
its shorter side and centre-cropped to ``--image-size`` once, at load, into the uint8 tensor
both pipelines take. The statistics are the training split's (or ``--mean``/``--std``).
torch and torchvision are imported inside the functions that read (see ``spec.py``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ignite_rn50.data.spec import DatasetSpec, ImageSet, ReadOptions, Stats, existing_folder
from ignite_rn50.errors import UserError

if TYPE_CHECKING:
    import torch

LAYOUT = "a folder holding train/<class>/<image> and val/<class>/<image> (or test/)"
FIX = "torchvision ImageFolder's layout"


class ImageFolderSpec(DatasetSpec):
    name: ClassVar[str] = "folder"  # type: ignore[misc]
    title: ClassVar[str] = "image folder"  # type: ignore[misc]
    resizes: ClassVar[bool] = True
    data_help: ClassVar[str] = LAYOUT

    def locate(self, data: str | None) -> Path:
        if data is None:
            raise UserError(f"--data is required for --dataset folder: pass {LAYOUT}")
        root = existing_folder(data, LAYOUT)
        folders = {split: split_dir(root, split) for split in ("train", "test")}
        classes = find_classes(folders["train"])
        for split, folder in folders.items():  # the layout's faults before any run starts
            scan(folder, classes, train=split == "train")
        return root

    def count_classes(self, where: Path | None, options: ReadOptions) -> int:
        assert where is not None
        return len(find_classes(split_dir(where, "train")))

    def read(self, split: str, where: Path | None, options: ReadOptions,
             train: ImageSet | None = None) -> ImageSet:
        assert where is not None
        classes = find_classes(split_dir(where, "train"))
        folder = split_dir(where, split)
        samples = scan(folder, classes, train=split == "train")
        images = decode([path for path, _ in samples], options.image_size, options.workers)
        import torch

        labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
        if options.mean is not None and options.std is not None:
            mean, std = options.mean, options.std
        elif train is not None:
            mean, std = train.mean, train.std
        elif split == "train":
            mean, std = statistics(images)
        else:  # the test split alone, with no statistics given: the training split's
            mean, std = statistics(self.read("train", where, options).images)
        return ImageSet(images, labels, len(classes), mean, std, tuple(classes), self.flip)


def split_dir(root: Path, split: str) -> Path:
    """``train/``, or for the test split ``val/`` (``test/`` where only it exists)."""
    names = ("train",) if split == "train" else ("val", "test")
    for name in names:
        if (root / name).is_dir():
            return root / name
    wanted = " or ".join(f"{n}/" for n in names)
    raise UserError(f"--data {root} has no {wanted} folder; pass {LAYOUT} ({FIX})")


def find_classes(train: Path) -> list[str]:
    """``ImageFolder``'s classes (its sorted sub-folders); at least two."""
    from torchvision.datasets.folder import find_classes as imagefolder_classes

    classes, _ = imagefolder_classes(str(train)) if any(
        entry.is_dir() for entry in os.scandir(train)) else ([], {})
    if len(classes) < 2:
        raise UserError(f"{train} holds {len(classes)} class folder(s); a classifier needs at "
                        "least two: add a folder of images per class")
    return classes


def is_image_file(path: str) -> bool:
    """The files ``ImageFolder`` accepts (by extension), hidden ones left out."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    return not os.path.basename(path).startswith(".") and has_file_allowed_extension(
        path, IMG_EXTENSIONS)


def scan(folder: Path, classes: list[str], *, train: bool) -> list[tuple[str, int]]:
    """(file, label) pairs in ``ImageFolder``'s order, labels by the training classes; a class
    folder the training split lacks, or one without images, is one UserError."""
    from torchvision.datasets.folder import make_dataset

    present = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    unknown = [name for name in present if name not in classes]
    if unknown:
        raise UserError(f"{folder / unknown[0]} is a class that {folder.parent / 'train'} lacks; "
                        "add its images to train/ or remove the folder")
    for name in present if not train else classes:
        if not any(is_image_file(str(p)) for p in (folder / name).rglob("*")):
            raise UserError(f"{folder / name} holds no image file; add images (.png, .jpg, ...) "
                            "or remove the folder")
    index = {name: i for i, name in enumerate(classes) if name in present}
    return make_dataset(str(folder), index, is_valid_file=is_image_file)


class Decoded:
    """Each file through torchvision's loader (PIL, to RGB) and the load-time resize and
    crop, as uint8 [3, size, size]; a file that does not decode gives its reason (a str)
    instead, for the caller to name (DataLoader workers would wrap an exception in a
    traceback)."""

    def __init__(self, paths: list[str], size: int) -> None:
        from torchvision import transforms as T

        self.paths = paths
        self.transform = T.Compose([T.Resize(size), T.CenterCrop(size), T.PILToTensor()])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Any:
        from torchvision.datasets.folder import default_loader

        try:
            return self.transform(default_loader(self.paths[i]))
        except Exception as exc:  # noqa: BLE001 - PIL raises many kinds; each means "no image"
            return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"


def decode(paths: list[str], size: int, workers: int) -> torch.Tensor:
    """uint8 [N, 3, size, size], decoded by ``workers`` DataLoader processes."""
    import torch
    from torch.utils.data import DataLoader

    out = torch.empty(len(paths), 3, size, size, dtype=torch.uint8)
    loader = DataLoader(Decoded(paths, size), batch_size=64, num_workers=workers,
                        collate_fn=list)
    done = 0
    for batch in loader:
        for item in batch:
            if isinstance(item, str):
                raise UserError(f"{paths[done]} does not decode as an image ({item}); remove "
                                "or replace the file")
            out[done] = item
            done += 1
    return out


def statistics(images: torch.Tensor) -> tuple[Stats, Stats]:
    """Per-channel mean and (population) std of the uint8 images, on 0-255."""
    import torch

    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for chunk in images.split(1024):  # float64 a chunk at a time, not the whole set
        x = chunk.to(torch.float64).transpose(0, 1).reshape(3, -1)
        total += x.sum(1)
        squares += (x * x).sum(1)
    count = images.numel() / 3
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt()
    return (tuple(round(float(v), 4) for v in mean),  # type: ignore[return-value]
            tuple(round(float(v), 4) for v in std))
