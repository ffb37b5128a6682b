"""ResNet for 32x32 images: torchvision's ResNet with the CIFAR stem of mmcls (or, for
larger images, torchvision's own ImageNet stem: ``--stem``).

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


STEMS = ("cifar", "imagenet")
CIFAR_STEM_UP_TO = 64  # px: --stem auto takes the CIFAR stem up to this image side


def resolve_stem(choice: str, image_size: int) -> str:
    """--stem auto: the CIFAR stem keeps small images' resolution; above 64 px the ImageNet
    stem's stride 4 saves 16x the compute of every later layer."""
    if choice != "auto":
        return choice
    return "cifar" if image_size <= CIFAR_STEM_UP_TO else "imagenet"


def build_model(depth: int, num_classes: int, stem: str = "cifar") -> nn.Module:
    """``stem``: cifar (mmcls ResNet_CIFAR) or imagenet (torchvision's and mmcls ResNet's
    7x7 stride-2 conv and 3x3 stride-2 max-pool, as torchvision builds them)."""
    if depth not in ARCHS:
        raise ValueError(f"depth must be one of {sorted(ARCHS)}, got {depth}")
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem}")
    model = ARCHS[depth](weights=None, num_classes=num_classes, zero_init_residual=True)
    if stem == "cifar":
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    nn.init.normal_(model.fc.weight, 0.0, 0.01)
    nn.init.zeros_(model.fc.bias)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())



def stem_of(state: dict) -> str | None:
    """Which stem a state dict's weights are for, from conv1's kernel (3x3 or 7x7)."""
    conv = state.get("conv1.weight")
    if conv is None or conv.dim() != 4:
        return None
    return {3: "cifar", 7: "imagenet"}.get(int(conv.shape[-1]))
