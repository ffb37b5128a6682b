"""Mixed precision (``system/precision.py``): a static loss scale stays static."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ignite_rn50.system import precision as prec

CPU = torch.device("cpu")


@pytest.mark.parametrize("scale", [1024.0, None])
def test_a_static_loss_scale_skips_an_overflowing_step_and_stays(scale: float | None) -> None:
    """apex's static scale: an fp16 step whose gradients overflow is skipped and the scale
    is kept at its value (GradScaler alone would halve it, as the dynamic scale does)."""
    precision = prec.Precision(True, torch.float16, "native", loss_scale=scale)
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = prec.make_grad_scaler(CPU, precision)
    assert scaler is not None
    amp = prec.Amp(CPU, precision, scaler)
    start_scale = scaler.get_scale()
    before = copy.deepcopy(model.state_dict())
    with amp.autocast():  # fp16 logits near 6e4: the scaled gradients overflow
        loss = nn.functional.cross_entropy(model(torch.full((2, 4), 6e4)), torch.tensor([0, 1]))
    amp.backward_and_step(loss * 1e3, opt)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # skipped
    assert scaler.get_scale() == (1024.0 if scale else start_scale / 2)
    opt.zero_grad(set_to_none=True)
    with amp.autocast():  # a finite step goes through, and a static scale does not grow
        loss = nn.functional.cross_entropy(model(torch.ones(2, 4)), torch.tensor([0, 1]))
    amp.backward_and_step(loss, opt)
    assert not torch.equal(before["weight"], model.state_dict()["weight"])
    if scale:
        assert scaler.get_scale() == 1024.0


def _grads(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_clipping_bounds_the_norm_and_returns_the_norm_before() -> None:
    torch.manual_seed(0)
    model = nn.Linear(8, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the gradients stay to be read
    amp = prec.Amp(CPU, prec.Precision(False, None, "native"))
    amp.backward((model(torch.randn(16, 8)) * 100).square().mean(), opt)
    before = _grads(model).norm()
    norm = amp.step(opt, clip=1.0)
    assert norm is not None and torch.allclose(norm, before)
    assert before > 10 and _grads(model).norm() <= 1.0 + 1e-5


def test_clipping_above_the_norm_changes_nothing() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
    models = [nn.Linear(8, 4)]
    models.append(copy.deepcopy(models[0]))
    amp = prec.Amp(CPU, prec.Precision(False, None, "native"))
    for model, clip in zip(models, (None, 1e6), strict=True):
        opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        for _ in range(3):
            opt.zero_grad()
            amp.backward(nn.functional.cross_entropy(model(x), y), opt)
            amp.step(opt, clip=clip)
    assert all(torch.equal(a, b) for a, b in zip(models[0].parameters(),
                                                 models[1].parameters(), strict=True))


def test_clipping_under_a_static_loss_scale_keeps_overflowing_steps_skipped() -> None:
    """Clipping comes after GradScaler's unscale_, which records the overflow: the step is
    still skipped (clipping inf gradients would make them NaN, never finite) and the scale
    stays; a finite step is clipped on the true (unscaled) gradients."""
    precision = prec.Precision(True, torch.float16, "native", loss_scale=1024.0)
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = prec.make_grad_scaler(CPU, precision)
    amp = prec.Amp(CPU, precision, scaler)
    before = copy.deepcopy(model.state_dict())
    with amp.autocast():
        loss = nn.functional.cross_entropy(model(torch.full((2, 4), 6e4)), torch.tensor([0, 1]))
    amp.backward(loss * 1e3, opt)
    amp.step(opt, clip=1.0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert scaler.get_scale() == 1024.0
    opt.zero_grad(set_to_none=True)
    with amp.autocast():
        loss = nn.functional.cross_entropy(model(torch.ones(2, 4)), torch.tensor([0, 1]))
    amp.backward(loss, opt)
    norm = amp.step(opt, clip=1e-3)
    assert norm is not None and 1e-2 < float(norm) < 10  # the true norm, not x1024
    assert _grads(model).norm() <= 1e-3 * (1 + 1e-3)
    assert not torch.equal(before["weight"], model.state_dict()["weight"])
