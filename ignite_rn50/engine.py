"""The train step and the two Engines. No file or logging I/O here.

The step is ours rather than ``create_supervised_trainer``'s because ignite autocasts on
"cuda" whatever the device; ours autocasts on the real device type (npu, cuda, cpu) and
returns the loss as a device tensor, so no host sync happens per step.
"""

from __future__ import annotations

from typing import Callable

import torch
from ignite.engine import Engine
from ignite.metrics import Accuracy, Loss, TopKCategoricalAccuracy
from torch import nn

from ignite_rn50 import device as dev

Batch = tuple[torch.Tensor, torch.Tensor]


def make_train_step(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module,
                    device: torch.device, precision: dev.Precision,
                    scaler: torch.amp.GradScaler | None,
                    memory_format: torch.memory_format = torch.contiguous_format,
                    ) -> Callable[[Engine, Batch], torch.Tensor]:
    use_apex = precision.backend == "apex"

    def train_step(engine: Engine, batch: Batch) -> torch.Tensor:
        model.train()
        images, targets = batch
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        targets = targets.to(device, non_blocking=True)
        with dev.autocast(device, precision):
            logits = model(images)
            loss = criterion(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        if use_apex:
            dev.apex_backward(loss, optimizer)
            optimizer.step()
        elif scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        # What really ran (not what was asked): read back by summary.json and the tests.
        engine.state.step_dtype = logits.dtype
        engine.state.step_device = logits.device
        return loss.detach()

    return train_step


def create_trainer(train_step: Callable[[Engine, Batch], torch.Tensor]) -> Engine:
    trainer = Engine(train_step)
    trainer.logger.disabled = True  # our own log lines say what happens, once per interval
    return trainer


def create_evaluator(model: nn.Module, criterion: nn.Module, device: torch.device,
                     precision: dev.Precision,
                     memory_format: torch.memory_format = torch.contiguous_format) -> Engine:
    """top-1, top-5 and loss, accumulated on the device and all-reduced once at the end."""

    @torch.no_grad()
    def eval_step(engine: Engine, batch: Batch) -> Batch:
        model.eval()
        images, targets = batch
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        targets = targets.to(device, non_blocking=True)
        with dev.autocast(device, precision):
            logits = model(images)
        return logits.float(), targets

    evaluator = Engine(eval_step)
    evaluator.logger.disabled = True
    Accuracy(device=device).attach(evaluator, "top1")
    TopKCategoricalAccuracy(k=5, device=device).attach(evaluator, "top5")
    Loss(criterion, device=device).attach(evaluator, "loss")
    return evaluator
