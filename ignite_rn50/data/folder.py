"""Your own images: ``--dataset folder --data DIR`` reads ``DIR/train/<class>/<image>`` and
``DIR/val/<class>/<image>`` (``test/`` where there is no ``val/``), torchvision
``ImageFolder``'s and mmcls ``CustomDataset``'s layout.

Class names and order are ``ImageFolder``'s (sorted class folders of ``train/``), the files
are those it accepts by extension (hidden files ignored), and each image is read by
torchvision's loader (PIL, converted to RGB: grey, palette and RGBA images too), resized on
its shorter side and centre-cropped to ``--image-size``: once, at load, into the uint8 tensor
the device pipeline takes, or (``ReadOptions.keep_files``) where the torchvision pipeline's
workers use it, so that a set need not fit in memory (``files.py``). The statistics are the
training split's (or ``--mean``/``--std``). torch and torchvision are imported inside the
functions that read (see ``spec.py``).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ignite_rn50.data import files
from ignite_rn50.data.spec import (
    DatasetSpec,
    ImageFiles,
    ImageSet,
    ReadOptions,
    Stats,
    existing_folder,
)
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
        samples = scan(split_dir(where, split), classes, train=split == "train")
        found = ImageFiles(tuple(path for path, _ in samples), options.image_size)
        images = found if options.keep_files else files.decode(found, options.workers)
        import torch

        labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
        mean, std = self._statistics(split, where, options, (images, train))
        return ImageSet(images, labels, len(classes), mean, std, tuple(classes), self.flip)

    def _statistics(self, split: str, where: Path, options: ReadOptions,
                   read: tuple[torch.Tensor | ImageFiles, ImageSet | None]
                   ) -> tuple[Stats, Stats]:
        """Given, the training split's (read beside this one, or by itself and streamed), or
        the training images' own. Images left in their files are checked here: decoded for
        their statistics, verified otherwise."""
        images, train = read
        if options.mean is not None and options.std is not None:
            stats = options.mean, options.std
        elif train is not None:
            stats = train.mean, train.std
        elif split != "train":  # the test split alone: the training split's, not held
            alone = self.read("train", where, replace(options, keep_files=True))
            stats = alone.mean, alone.std
        else:
            return files.statistics(files.chunks(images, options.workers))
        if isinstance(images, ImageFiles):
            files.verify(images, options.workers)
        return stats


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
