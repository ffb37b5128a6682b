"""The datasets the trainer knows: a new dataset is one new file in ``data/`` (its
``DatasetSpec``, see ``spec.py``) and one entry here (docs/extending.md walks through one).

Plain data (no torch), so ``--help`` can list them before anything heavy loads.
"""

from __future__ import annotations

from ignite_rn50.data.cifar import CIFAR10, CIFAR100
from ignite_rn50.data.folder import ImageFolderSpec
from ignite_rn50.data.spec import DatasetSpec
from ignite_rn50.data.synthetic import Synthetic

DATASETS: dict[str, DatasetSpec] = {
    "cifar100": CIFAR100,
    "cifar10": CIFAR10,
    "synthetic": Synthetic(),
    "folder": ImageFolderSpec(),
}


def dataset_spec(name: str) -> DatasetSpec:
    return DATASETS[name]
