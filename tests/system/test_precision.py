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
