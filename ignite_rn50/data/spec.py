"""What a dataset is to the trainer: a ``DatasetSpec`` owns everything about its data (where
``--data`` points, how it is fetched, how a split is read, its normalisation, whether its
images may be flipped), and every split comes out as an ``ImageSet``.

Plain data at the top level (no torch, numpy or torchvision: ``config/declaration.py`` lists
the registry's names for ``--help``); a spec's ``read`` imports what it needs when it runs.
A new dataset is a subclass in a file of its own plus one entry in ``registry.py``
(docs/extending.md walks through one).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ignite_rn50.errors import UserError, path_problem

if TYPE_CHECKING:
    import torch
    from PIL import Image

Stats = tuple[float, float, float]  # per channel on 0-255 RGB

# mmcls resnet50_8xb16_cifar100's statistics: the default of an ImageSet
CIFAR100_MEAN, CIFAR100_STD = (129.304, 124.070, 112.434), (68.170, 65.392, 70.418)


@dataclass(frozen=True)
class ImageFiles:
    """A split's images left in their files, each read where it is used (in the torchvision
    pipeline's DataLoader workers), so that a set need not fit in memory. ``shape`` and
    ``numel`` are those of the uint8 tensor the files would make."""

    paths: tuple[str, ...]
    size: int  # the side each image is resized and centre-cropped to

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), 3, self.size, self.size)

    def numel(self) -> int:
        return len(self.paths) * 3 * self.size * self.size

    def take(self, indices: torch.Tensor) -> ImageFiles:
        return ImageFiles(tuple(self.paths[i] for i in indices.tolist()), self.size)

    def load(self, i: int) -> Image.Image | str:
        """File ``i`` through torchvision's loader (PIL, to RGB), resized on its shorter side
        and centre-cropped to ``size``: the pixels a split read into memory keeps. A file
        that does not decode gives the one line naming it (a str: DataLoader workers would
        wrap an exception in a traceback)."""
        from torchvision import transforms as T
        from torchvision.datasets.folder import default_loader

        try:
            return T.CenterCrop(self.size)(T.Resize(self.size)(default_loader(self.paths[i])))
        except Exception as exc:  # noqa: BLE001 - PIL raises many kinds; each means "no image"
            return self.refusal(i, exc)

    def check(self, i: int) -> str | None:
        """PIL's ``verify`` of file ``i`` (its structure, not its pixels): None, or the line
        naming it."""
        from PIL import Image

        try:
            with Image.open(self.paths[i]) as image:
                image.verify()
        except Exception as exc:  # noqa: BLE001 - as in load
            return self.refusal(i, exc)
        return None

    def refusal(self, i: int, exc: Exception) -> str:
        reason = str(exc).splitlines()[0][:120] if str(exc) else ""
        return (f"{self.paths[i]} does not decode as an image ({type(exc).__name__}: "
                f"{reason}); remove or replace the file")


@dataclass
class ImageSet:
    """One split: uint8 ``[N, 3, H, W]`` images (or, for the torchvision pipeline, the files
    they are read from) and int64 labels, with what the pipelines and the checkpoints need to
    know of the dataset."""

    images: torch.Tensor | ImageFiles  # uint8 [N, 3, H, W], or files read where used
    labels: torch.Tensor  # int64 [N]
    num_classes: int
    mean: Stats = CIFAR100_MEAN  # the dataset's statistics, 0-255 RGB
    std: Stats = CIFAR100_STD
    class_names: tuple[str, ...] | None = None  # by label index, where the dataset names them
    flip: bool = True  # the training pipeline may mirror these images

    def __len__(self) -> int:
        return int(self.labels.numel())

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def take(self, indices: torch.Tensor) -> ImageSet:
        """The images and labels at ``indices`` (a shard), with the same facts."""
        images = (self.images.take(indices) if isinstance(self.images, ImageFiles)
                  else self.images[indices])
        return replace(self, images=images, labels=self.labels[indices])


@dataclass(frozen=True)
class SyntheticSizes:
    """The --synthetic-* options."""

    train: int
    test: int
    classes: int
    image_size: int


@dataclass(frozen=True)
class ReadOptions:
    """What a run tells the readers beyond ``--data``: the synthetic sizes, the side images
    are resized to (datasets that resize), a given normalisation (``--mean``/``--std`` or a
    checkpoint's record), the decoding workers, and whether a dataset of image files may
    leave its images in the files (``ImageFiles``, for the torchvision pipeline; datasets
    held in memory anyway ignore it)."""

    synthetic: SyntheticSizes | None = None
    image_size: int = 32
    mean: Stats | None = None
    std: Stats | None = None
    workers: int = 0
    keep_files: bool = False


@dataclass(frozen=True)
class Download:
    """An archive the dataset is fetched as: torchvision's downloader checks its MD5 and
    extracts it, giving ``folder``."""

    url: str
    archive: str
    md5: str
    folder: str  # what the archive extracts to, under --data


class DatasetSpec:
    """The seam every dataset implements (see the module's docstring)."""

    # name (the --dataset value) and title (what users call it, in messages): no class
    # value here, so that a dataclass spec can take them as fields
    name: str
    title: str
    needs_files: ClassVar[bool] = True  # --data required
    flip: ClassVar[bool] = True  # horizontal flips suit it (not digits, not text)
    resizes: ClassVar[bool] = False  # takes --image-size
    download: ClassVar[Download | None] = None  # what --download fetches, if it can
    data_help: ClassVar[str] = ""  # what --data should name, in messages
    stats: ClassVar[tuple[Stats, Stats] | None] = None  # fixed (mean, std), if it has them

    def present(self, root: Path) -> bool:
        """Whether the files are in ``root`` (--download fetches them otherwise)."""
        return True

    def locate(self, data: str | None) -> Path | None:
        """--data resolved to where the files are; one UserError naming the fix otherwise."""
        if not self.needs_files:
            return None
        if data is None:
            raise UserError(f"--data is required for --dataset {self.name}: pass "
                            f"{self.data_help}")
        return existing_folder(data, self.data_help)

    def read(self, split: str, where: Path | None, options: ReadOptions,
             train: ImageSet | None = None) -> ImageSet:
        """``split`` ("train" or "test") as an ImageSet. ``train``: the training split, read
        first, for datasets whose test split takes its statistics or class list."""
        raise NotImplementedError

    def options_problem(self, image_size: int, mean: list[float], std: list[float],
                        given: list[str]) -> str | None:
        """What is wrong with --image-size/--mean/--std (``given``: those set) for this
        dataset, or None."""
        if given and not self.resizes:
            return (f"{', '.join(given)} apply to --dataset folder, not {self.name} (its images "
                    f"and statistics are fixed); drop {', '.join(given)}")
        if not 8 <= image_size <= 4096:
            return f"--image-size must be in 8..4096, got {image_size}"
        if not (len(mean) == len(std) in (0, 3) and all(v > 0 for v in std)):
            return (f"--mean and --std take 3 values each (0-255 RGB, std > 0), got {mean} and "
                    f"{std}")
        return None

    def image_side(self, options: ReadOptions) -> int:
        """The side its images will have once read (before reading them)."""
        return options.image_size if self.resizes else 32

    def count_classes(self, where: Path | None, options: ReadOptions) -> int:
        """The classes a model for this dataset has (before reading the images)."""
        raise NotImplementedError


def existing_folder(data: str | Path, expected: str) -> Path:
    """``--data`` as an existing, readable folder, or one line saying what is wrong."""
    path = Path(data).expanduser()
    problem = path_problem(path)
    if problem:
        raise UserError(f"--data {path} {problem}; pass {expected}")
    if not path.exists():
        raise UserError(f"--data {path} does not exist; pass {expected}")
    if not path.is_dir():
        raise UserError(f"--data {path} is a file; pass {expected}")
    return path
