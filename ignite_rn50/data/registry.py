"""The datasets the trainer knows, one small spec each: a new dataset is one new entry here.

Specs are plain data (no torch), so ``--help`` can list them before anything heavy loads;
``readers.py`` reads the files a spec names, ``pipelines.py`` normalises with its statistics.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PickledCifar:
    """A dataset in the CIFAR python-pickle layout: a folder of pickled dicts, each holding
    ``data`` (uint8 [N, 3072], CHW order) and the labels under ``label_key``."""

    name: str  # the --dataset value
    title: str  # what users call it, in messages
    folder: str  # the folder the archive extracts to
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    num_classes: int
    mean: tuple[float, float, float]  # per channel on 0-255 RGB (mmcls's numbers)
    std: tuple[float, float, float]
    url: str
    archive: str
    md5: str  # of the archive
    image_size: int = 32

    needs_files = True


@dataclass(frozen=True)
class Synthetic:
    """Learnable generated images (see ``data.make_synthetic``); sizes come from the
    ``--synthetic-*`` options. Normalised like CIFAR-100, whose statistics they roughly share."""

    name: str
    title: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    needs_files = False


DatasetSpec = PickledCifar | Synthetic

# mmcls resnet50_8xb16_cifar100 and resnet50_8xb16_cifar10 normalise with these.
CIFAR100_MEAN, CIFAR100_STD = (129.304, 124.070, 112.434), (68.170, 65.392, 70.418)
CIFAR10_MEAN, CIFAR10_STD = (125.307, 122.961, 113.8575), (51.5865, 50.847, 51.255)

DATASETS: dict[str, DatasetSpec] = {
    "cifar100": PickledCifar(
        name="cifar100", title="CIFAR-100", folder="cifar-100-python",
        train_files=("train",), test_files=("test",), meta_file="meta",
        label_key="fine_labels", num_classes=100, mean=CIFAR100_MEAN, std=CIFAR100_STD,
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        archive="cifar-100-python.tar.gz", md5="eb9058c3a382ffc7106e4002c42a8d85"),
    "cifar10": PickledCifar(
        name="cifar10", title="CIFAR-10", folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)), test_files=("test_batch",),
        meta_file="batches.meta", label_key="labels", num_classes=10, mean=CIFAR10_MEAN,
        std=CIFAR10_STD, url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        archive="cifar-10-python.tar.gz", md5="c58f30108f718f92721af3b95e74349a"),
    "synthetic": Synthetic(name="synthetic", title="synthetic", mean=CIFAR100_MEAN,
                           std=CIFAR100_STD),
}


def dataset_spec(name: str) -> DatasetSpec:
    return DATASETS[name]


def file_datasets() -> list[PickledCifar]:
    return [spec for spec in DATASETS.values() if isinstance(spec, PickledCifar)]
