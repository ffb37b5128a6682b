"""The network (``model/resnet.py``): the mmcls CIFAR ResNet on torchvision's ResNet."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from ignite_rn50.model.resnet import build_model, count_parameters


def test_resnet50_cifar100_parameter_count_and_output() -> None:
    model = build_model(50, 100)
    assert count_parameters(model) == pytest.approx(23.71e6, rel=1e-3)
    out = model.eval()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 100)


def test_cifar_stem_no_maxpool() -> None:
    model = build_model(50, 100)
    conv = model.conv1
    assert (conv.kernel_size, conv.stride, conv.padding, conv.bias) == ((3, 3), (1, 1), (1, 1),
                                                                        None)
    assert isinstance(model.maxpool, nn.Identity)
    # stages strided 1,2,2,2 with the stride on the 3x3 conv: 32 -> 32, 16, 8, 4
    feats = {}
    for name in ("layer1", "layer2", "layer3", "layer4"):
        getattr(model, name).register_forward_hook(
            lambda m, i, o, name=name: feats.__setitem__(name, o.shape[-1]))
    model.eval()(torch.randn(1, 3, 32, 32))
    assert feats == {"layer1": 32, "layer2": 16, "layer3": 8, "layer4": 4}
    assert model.layer2[0].conv2.stride == (2, 2) and model.layer2[0].conv1.stride == (1, 1)


@pytest.mark.parametrize("depth, block", [(18, BasicBlock), (34, BasicBlock), (50, Bottleneck),
                                          (101, Bottleneck), (152, Bottleneck)])
def test_depths_zero_init_residual_and_head(depth: int, block: type) -> None:
    torch.manual_seed(0)
    model = build_model(depth, 100)
    blocks = [m for m in model.modules() if isinstance(m, block)]
    assert blocks
    last_bn = "bn3" if block is Bottleneck else "bn2"
    assert all(torch.count_nonzero(getattr(b, last_bn).weight) == 0 for b in blocks)
    assert model.fc.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert torch.count_nonzero(model.fc.bias) == 0


def test_the_imagenet_stem_and_auto() -> None:
    from ignite_rn50.model.resnet import resolve_stem, stem_of

    model = build_model(18, 7, "imagenet")
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    assert isinstance(model.maxpool, nn.MaxPool2d) and model.fc.out_features == 7
    assert model(torch.zeros(2, 3, 96, 96)).shape == (2, 7)
    assert [resolve_stem("auto", s) for s in (32, 64, 65, 224)] == [
        "cifar", "cifar", "imagenet", "imagenet"]
    assert resolve_stem("cifar", 224) == "cifar"
    assert stem_of(model.state_dict()) == "imagenet"
    assert stem_of(build_model(18, 7).state_dict()) == "cifar"


def test_weights_of_another_stem_are_refused_by_name(tmp_path) -> None:
    from ignite_rn50.errors import UserError
    from ignite_rn50.model.weights import load_into

    torch.save({"model": build_model(18, 10).state_dict()}, tmp_path / "cifar.pt")
    with pytest.raises(UserError, match="trained with the cifar stem, this model has the "
                       "imagenet stem; pass --stem cifar"):
        load_into(build_model(18, 10, "imagenet"), tmp_path / "cifar.pt", flag="--init-from")
