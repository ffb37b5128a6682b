"""Parameters and FLOPs per image, as the package's ``tools/get_flops.py`` and timm's
``benchmark.py`` report them: torch's ``FlopCounterMode`` counts 2 FLOPs per multiply-add of
the convolutions and matrix products (mmcv's counter reports multiply-adds: mmcls's model zoo
gives ResNet-50 CIFAR 1.31 GFLOPs, i.e. 1.31 G multiply-adds, 2.62 G FLOPs here).
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from ignite_rn50.model.resnet import build_model


def flops_per_image(depth: int, num_classes: int, image_size: int) -> int:
    """One image's forward, counted on the meta device: no memory, no compute."""
    with torch.device("meta"):
        model = build_model(depth, num_classes).eval()  # BN of a 1-image batch
        image = torch.empty(1, 3, image_size, image_size)
    with FlopCounterMode(display=False) as counter:
        model(image)
    return int(counter.get_total_flops())
