"""FLOPs per image (``model/flops.py``) against mmcls's model zoo figure."""

from __future__ import annotations

import pytest

from ignite_rn50.model.flops import flops_per_image
from ignite_rn50.model.resnet import build_model, count_parameters


def test_resnet50_cifar_is_mmcls_model_zoo_figure() -> None:
    """mmcls: ResNet-50 CIFAR, 23.71 M parameters, 1.31 G multiply-adds per 32x32 image;
    torch's counter gives 2 FLOPs per multiply-add."""
    macs = flops_per_image(50, 100, 32) / 2
    assert macs / 1e9 == pytest.approx(1.31, rel=0.02)
    assert count_parameters(build_model(50, 100)) / 1e6 == pytest.approx(23.71, abs=0.01)


def test_flops_follow_the_image_size() -> None:
    """A 16x16 image has a quarter of the convolutions' positions (the head is tiny)."""
    assert flops_per_image(18, 10, 16) / flops_per_image(18, 10, 32) == pytest.approx(
        0.25, rel=0.01)
