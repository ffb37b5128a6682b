"""The train step and the two Engines (the parts they run are put together in
``assembly.py``). Nothing is read or written here.

The step is ours rather than ``create_supervised_trainer``'s because ignite autocasts on
"cuda" whatever the device; ours autocasts on the real device type (npu, cuda, cpu) and
returns the loss as a device tensor, so no host sync happens per step.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch
from ignite.engine import Engine
from ignite.metrics import Accuracy, ConfusionMatrix, Loss, Metric, TopKCategoricalAccuracy
from torch import nn

from ignite_rn50.data.mixing import BatchMix
from ignite_rn50.system import device as dev
from ignite_rn50.system import precision as prec
from ignite_rn50.training.assembly import Parts, StepOptions
from ignite_rn50.training.graph import GraphedStep, StepBody

log = logging.getLogger("ignite_rn50")
Batch = tuple[torch.Tensor, torch.Tensor]


def prepare_batch(batch: Batch, device: torch.device,
                  memory_format: torch.memory_format = torch.contiguous_format) -> Batch:
    """Both steps' inputs: on the device (asynchronously), images in the model's layout."""
    images, targets = batch
    return (images.to(device, non_blocking=True, memory_format=memory_format),
            targets.to(device, non_blocking=True))


class Update:
    """Forward, loss, backward and optimizer step on ready inputs (gradients already None);
    returns the detached loss and the logits."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module,
                 amp: prec.Amp, autocast_cache: bool = True) -> None:
        self.model, self.optimizer, self.criterion = model, optimizer, criterion
        self.amp, self.autocast_cache = amp, autocast_cache

    def __call__(self, images: torch.Tensor, targets: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        with self.amp.autocast(self.autocast_cache):
            logits = self.model(images)
            loss = self.criterion(logits, targets)
        self.amp.backward_and_step(loss, self.optimizer)
        return loss.detach(), logits


def no_sync(net: nn.Module) -> contextlib.AbstractContextManager:
    """DDP's no_sync (under torch.compile's wrapper too); nothing for a bare model."""
    ddp = getattr(net, "_orig_mod", net)
    return ddp.no_sync() if hasattr(ddp, "no_sync") else contextlib.nullcontext()


class AccumulatingUpdate:
    """``Update`` in micro-batches (--accum-steps) and/or with clipping (--clip-grad-norm):
    each micro-batch's loss is weighted by its share of the batch, so the summed gradients
    are those of the whole batch's mean loss (a last partial batch included); DDP
    all-reduces only in the last backward. Then one optimiser step; the gradient norm stays
    on the device in ``facts.grad_norm`` (read at the --print-freq points only)."""

    def __init__(self, update: Update, options: StepOptions, facts: StepFacts) -> None:
        self.update, self.options, self.facts = update, options, facts

    def __call__(self, images: torch.Tensor, targets: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        u, n = self.update, self.options.accum_steps
        chunks = [(x, y) for x, y in zip(images.tensor_split(n), targets.tensor_split(n),
                                         strict=True) if len(y)]
        total, loss_sum = len(targets), None
        for i, (x, y) in enumerate(chunks):
            last = i == len(chunks) - 1
            with contextlib.nullcontext() if last else no_sync(u.model):
                with u.amp.autocast(u.autocast_cache):
                    logits = u.model(x)
                    loss = u.criterion(logits, y)
                weighted = loss * (len(y) / total) if len(chunks) > 1 else loss
                u.amp.backward(weighted, u.optimizer, last=last)
            loss_sum = weighted.detach() if loss_sum is None else loss_sum + weighted.detach()
        self.facts.grad_norm = u.amp.step(u.optimizer, self.options.clip_grad_norm)
        assert loss_sum is not None
        return loss_sum, logits


class Inputs:
    """A training batch onto the device in the model's layout, then mixed (mixup/cutmix)
    when the recipe mixes: all on the device, drawn per epoch (mixing.py)."""

    def __init__(self, device: torch.device,
                 memory_format: torch.memory_format = torch.contiguous_format,
                 mix: BatchMix | None = None) -> None:
        self.device, self.memory_format, self.mix = device, memory_format, mix

    def __call__(self, engine: Engine, batch: Batch) -> Batch:
        images, targets = prepare_batch(batch, self.device, self.memory_format)
        if self.mix is not None:
            images, targets = self.mix(images, targets, engine.state)
        return images, targets


class TrainStep:
    """ignite's process function: the batch's inputs, then the update (eagerly, or through a
    captured graph when ``update`` is a GraphedStep)."""

    def __init__(self, model: nn.Module, update: StepBody, inputs: Inputs,
                 zero_grad: Callable[[], None] | None, facts: StepFacts | None = None) -> None:
        self.model, self.update, self.inputs, self.zero_grad = model, update, inputs, zero_grad
        self.facts = facts or StepFacts()

    def __call__(self, engine: Engine, batch: Batch) -> torch.Tensor:
        self.model.train()
        images, targets = self.inputs(engine, batch)
        if self.zero_grad is not None:
            self.zero_grad()
        loss, logits = self.update(images, targets)
        self.facts.record(logits, images)
        return loss


def make_train_step(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module,
                    amp: prec.Amp, inputs: Inputs | None = None,
                    options: StepOptions | None = None) -> TrainStep:
    update: StepBody = Update(model, optimizer, criterion, amp)
    facts = StepFacts()
    if options is not None and not options.plain:
        update = AccumulatingUpdate(update, options, facts)
    return TrainStep(model, update, inputs or Inputs(amp.device),
                     lambda: optimizer.zero_grad(set_to_none=True), facts)


def make_graphed_train_step(parts: Parts, device: torch.device,
                            api: dev.GraphApi | None) -> TrainStep:
    """The same step, captured once and replayed (see graph.py; it manages the gradients);
    ``api`` None runs every step eagerly through the same static buffers."""
    update = Update(parts.net, parts.optimizer, parts.criterion,
                    prec.Amp(device, parts.precision, parts.scaler), autocast_cache=False)
    return TrainStep(parts.net, GraphedStep(update, parts.optimizer, api),
                     Inputs(device, parts.memory_format, parts.mix), zero_grad=None)


def build_trainer(parts: Parts, device: torch.device, graph: bool) -> tuple[Engine, StepFacts]:
    """The trainer, and what its step reports of what really ran."""
    if graph:
        step = make_graphed_train_step(parts, device, dev.graph_api(device, parts.precision))
    else:
        step = make_train_step(parts.net, parts.optimizer, parts.criterion,
                               prec.Amp(device, parts.precision, parts.scaler),
                               Inputs(device, parts.memory_format, parts.mix), parts.step)
    return create_trainer(step), step.facts


@dataclass
class StepFacts:
    """What the train step really ran (not what was asked), from tensor metadata alone (no
    device sync): summary.json reports it."""

    dtype: torch.dtype | None = None
    device: torch.device | None = None
    channels_last: bool | None = None
    grad_norm: torch.Tensor | None = None  # the last step's, before clipping (on the device)

    def record(self, logits: torch.Tensor, images: torch.Tensor) -> None:
        self.dtype, self.device = logits.dtype, logits.device
        self.channels_last = (images.dim() == 4 and not images.is_contiguous()
                              and images.is_contiguous(memory_format=torch.channels_last))


def create_trainer(train_step: Callable[[Engine, Batch], torch.Tensor]) -> Engine:
    trainer = Engine(train_step)
    trainer.logger.disabled = True  # our own log lines say what happens, once per interval
    return trainer


class EvalStep:
    def __init__(self, model: nn.Module, device: torch.device, precision: prec.Precision,
                 memory_format: torch.memory_format) -> None:
        self.model, self.device = model, device
        self.precision, self.memory_format = precision, memory_format

    @torch.no_grad()
    def __call__(self, engine: Engine, batch: Batch) -> Batch:
        self.model.eval()
        images, targets = prepare_batch(batch, self.device, self.memory_format)
        with prec.autocast(self.device, self.precision):
            logits = self.model(images)
        return logits.float(), targets


class Evaluator(Engine):
    """ignite's Engine over the test batches, with its metrics. A rank whose shard holds no
    image (fewer test images than processes) runs no step (ignite refuses empty data) but
    still computes every metric, in the order of the others' ``EPOCH_COMPLETED``: it takes
    part in their all-reduces with zero counts, and every rank gets the job's figures."""

    def __init__(self, step: EvalStep, metrics: dict[str, Metric]) -> None:
        super().__init__(step)
        self.logger.disabled = True
        self.metrics = metrics
        for name, metric in metrics.items():
            metric.attach(self, name)

    def run(self, data: Any = None, max_epochs: int | None = None,
            epoch_length: int | None = None) -> Any:
        if data is not None and hasattr(data, "__len__") and len(data) == 0:
            self.state.metrics = {}
            for name, metric in self.metrics.items():
                metric.reset()
                metric.completed(self, name)
            return self.state
        return super().run(data, max_epochs, epoch_length)


def create_evaluator(model: nn.Module, criterion: nn.Module, device: torch.device,
                     precision: prec.Precision,
                     memory_format: torch.memory_format = torch.contiguous_format, *,
                     num_classes: int) -> Engine:
    """top-1, top-5, loss and the confusion matrix (``metrics["confusion"]``: int64
    [classes, classes], true class by row; outputs/perclass.py reads it), accumulated on the
    device and all-reduced once at the end."""
    return Evaluator(EvalStep(model, device, precision, memory_format),
                     {"top1": Accuracy(device=device),
                      "top5": TopKCategoricalAccuracy(k=5, device=device),
                      "loss": Loss(criterion, device=device),
                      "confusion": ConfusionMatrix(num_classes, device=device)})
