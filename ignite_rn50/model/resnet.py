"""ResNet for 32x32 images: torchvision's ResNet with the CIFAR stem of mmcls.

mmcls ``ResNet_CIFAR``: 3x3 stride-1 stem conv without bias, BN, ReLU, no max-pool; the four
stages are strided (1, 2, 2, 2) with the stride on the 3x3 conv (torchvision's "ResNet V1.5",
which is what mmcls does too). Last BN of every residual block starts at zero
(``zero_init_residual``), and the linear head is N(0, 0.01) with zero bias.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet

ARCHS = {18: resnet.resnet18, 34: resnet.resnet34, 50: resnet.resnet50,
         101: resnet.resnet101, 152: resnet.resnet152}


def build_model(depth: int, num_classes: int) -> nn.Module:
    if depth not in ARCHS:
        raise ValueError(f"depth must be one of {sorted(ARCHS)}, got {depth}")
    model = ARCHS[depth](weights=None, num_classes=num_classes, zero_init_residual=True)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    nn.init.normal_(model.fc.weight, 0.0, 0.01)
    nn.init.zeros_(model.fc.bias)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

