"""Learnable generated images (class-dependent smooth patterns plus noise), sized by the
``--synthetic-*`` options: the quick start and the tests train on them without any file.
Normalised like CIFAR-100, whose statistics they roughly share."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import ClassVar

from ignite_rn50.data.spec import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    DatasetSpec,
    ImageSet,
    ReadOptions,
    Stats,
    SyntheticSizes,
)
from ignite_rn50.errors import UserError


class Synthetic(DatasetSpec):
    name: ClassVar[str] = "synthetic"
    title: ClassVar[str] = "synthetic"
    needs_files: ClassVar[bool] = False
    stats: ClassVar[tuple[Stats, Stats]] = (CIFAR100_MEAN, CIFAR100_STD)

    def read(self, split: str, where: Path | None, options: ReadOptions,
             train: ImageSet | None = None) -> ImageSet:
        sizes = _sizes(options)
        size, seed = (sizes.train, 1) if split == "train" else (sizes.test, 2)
        return replace(make_synthetic(size, sizes.classes, sizes.image_size, split_seed=seed),
                       flip=self.flip)

    def image_side(self, options: ReadOptions) -> int:
        return _sizes(options).image_size

    def count_classes(self, where: Path | None, options: ReadOptions) -> int:
        return _sizes(options).classes


def _sizes(options: ReadOptions) -> SyntheticSizes:
    if options.synthetic is None:
        raise UserError("--dataset synthetic needs its --synthetic-* sizes")
    return options.synthetic


def make_synthetic(size: int, num_classes: int, image_size: int, *, split_seed: int,
                   pattern_seed: int = 1234) -> ImageSet:
    """Learnable images: one smooth colour pattern per class (same patterns in every split),
    plus per-image noise and brightness jitter, so accuracy far above chance is reachable
    in a few CPU epochs while the task is not trivial."""
    import torch

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
