"""The step: model, optimiser and precision put together, the train step and the two Engines.
Nothing is written here; the one file read is --init-from's weights.

The step is ours rather than ``create_supervised_trainer``'s because ignite autocasts on
"cuda" whatever the device; ours autocasts on the real device type (npu, cuda, cpu) and
returns the loss as a device tensor, so no host sync happens per step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from ignite.engine import Engine
from ignite.metrics import Accuracy, Loss, TopKCategoricalAccuracy
from torch import nn

from ignite_rn50 import device as dev
from ignite_rn50 import distributed, weights
from ignite_rn50 import precision as prec
from ignite_rn50.config import Config
from ignite_rn50.graph import GraphedStep, StepBody
from ignite_rn50.mixing import BatchMix, MixSpec
from ignite_rn50.model import build_model
from ignite_rn50.runtime import Runtime
from ignite_rn50.schedule import LrSchedule, ScheduleSpec

log = logging.getLogger("ignite_rn50")
Batch = tuple[torch.Tensor, torch.Tensor]


def prepare_batch(batch: Batch, device: torch.device,
                  memory_format: torch.memory_format = torch.contiguous_format) -> Batch:
    """Both steps' inputs: on the device (asynchronously), images in the model's layout."""
    images, targets = batch
    return (images.to(device, non_blocking=True, memory_format=memory_format),
            targets.to(device, non_blocking=True))


@dataclass
class Parts:
    """Everything a train step needs (checkpoints.setup_checkpoints picks what to save)."""

    model: nn.Module  # the bare model: checkpoints, evaluation, checksums
    net: nn.Module  # what the train step calls: DDP-wrapped and/or compiled
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    criterion: nn.Module  # the training loss
    eval_criterion: nn.Module  # the validation loss: plain cross-entropy
    schedule: LrSchedule
    precision: prec.Precision
    memory_format: torch.memory_format
    mix: BatchMix | None = None  # mixup/cutmix of the training batches, when the recipe has it


def mix_spec(cfg: Config) -> MixSpec:
    return MixSpec.resolve(cfg.mixup_alpha, cfg.mixup_prob, cfg.cutmix_alpha, cfg.cutmix_prob)


def schedule_spec(cfg: Config, epoch_length: int) -> ScheduleSpec:
    """--warmup-epochs counts iterations of this run's epochs (mmcv's warmup_by_epoch)."""
    warmup = cfg.warmup_iters or round(cfg.warmup_epochs * epoch_length)
    return ScheduleSpec(lr=cfg.lr, policy=cfg.lr_policy, milestones=tuple(cfg.lr_milestones),
                        gamma=cfg.lr_gamma, min_lr=cfg.min_lr, epochs=cfg.epochs,
                        warmup_iters=warmup, warmup_factor=cfg.warmup_factor)


def build_parts(cfg: Config, rt: Runtime, num_classes: int, epoch_length: int) -> Parts:
    """Model (from --init-from's weights if given), then optimiser, apex, DDP and
    compilation, in the order each requires: apex casts the model before DDP wraps it, and
    DDP broadcasts rank 0's weights."""
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = build_model(cfg.depth, num_classes)
    if cfg.init_from is not None:
        layout = weights.load_into(model, Path(cfg.init_from), flag="--init-from")
        if rt.is_main:
            log.info("initialised from %s (%s layout; optimizer, schedule and epochs start "
                     "fresh)", cfg.init_from, layout)
    model = model.to(rt.device, memory_format=memory_format)
    optimizer = prec.make_optimizer(model.parameters(), rt.device, rt.precision,
                                    prec.Sgd(cfg.lr, cfg.momentum, cfg.weight_decay,
                                             cfg.nesterov))
    if rt.precision.backend == "apex":
        model, optimizer = prec.apex_initialize(model, optimizer, rt.device, rt.precision)
    net = distributed.wrap_ddp(model, rt.device) if rt.processes > 1 else model
    if cfg.compile:
        net = dev.compile_model(net, rt.device)
    schedule = LrSchedule(optimizer, schedule_spec(cfg, epoch_length))
    mixing = mix_spec(cfg)
    return Parts(model=model, net=net, optimizer=optimizer,
                 scaler=prec.make_grad_scaler(rt.device, rt.precision),
                 criterion=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing).to(rt.device),
                 eval_criterion=nn.CrossEntropyLoss().to(rt.device), schedule=schedule,
                 precision=rt.precision, memory_format=memory_format,
                 mix=BatchMix(mixing, num_classes, rt.device, stream=(cfg.seed, rt.rank),
                              batch_size=cfg.batch_size // rt.processes)
                 if mixing.enabled else None)


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
                 zero_grad: Callable[[], None] | None) -> None:
        self.model, self.update, self.inputs, self.zero_grad = model, update, inputs, zero_grad

    def __call__(self, engine: Engine, batch: Batch) -> torch.Tensor:
        self.model.train()
        images, targets = self.inputs(engine, batch)
        if self.zero_grad is not None:
            self.zero_grad()
        loss, logits = self.update(images, targets)
        record_what_ran(engine, logits, images)
        return loss


def make_train_step(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module,
                    amp: prec.Amp, inputs: Inputs | None = None) -> TrainStep:
    update = Update(model, optimizer, criterion, amp)
    return TrainStep(model, update, inputs or Inputs(amp.device),
                     lambda: optimizer.zero_grad(set_to_none=True))


def make_graphed_train_step(parts: Parts, device: torch.device,
                            api: dev.GraphApi | None) -> TrainStep:
    """The same step, captured once and replayed (see graph.py; it manages the gradients);
    ``api`` None runs every step eagerly through the same static buffers."""
    update = Update(parts.net, parts.optimizer, parts.criterion,
                    prec.Amp(device, parts.precision, parts.scaler), autocast_cache=False)
    return TrainStep(parts.net, GraphedStep(update, parts.optimizer, api),
                     Inputs(device, parts.memory_format, parts.mix), zero_grad=None)


def build_trainer(parts: Parts, device: torch.device, graph: bool) -> Engine:
    if graph:
        return create_trainer(make_graphed_train_step(parts, device,
                                                      dev.graph_api(device, parts.precision)))
    return create_trainer(make_train_step(parts.net, parts.optimizer, parts.criterion,
                                          prec.Amp(device, parts.precision, parts.scaler),
                                          Inputs(device, parts.memory_format, parts.mix)))


def record_what_ran(engine: Engine, logits: torch.Tensor, images: torch.Tensor) -> None:
    """What really ran (not what was asked), from tensor metadata alone (no device sync):
    read back by summary.json and the tests."""
    engine.state.step_dtype = logits.dtype
    engine.state.step_device = logits.device
    engine.state.step_channels_last = (images.dim() == 4 and not images.is_contiguous()
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


def create_evaluator(model: nn.Module, criterion: nn.Module, device: torch.device,
                     precision: prec.Precision,
                     memory_format: torch.memory_format = torch.contiguous_format) -> Engine:
    """top-1, top-5 and loss, accumulated on the device and all-reduced once at the end."""
    evaluator = Engine(EvalStep(model, device, precision, memory_format))
    evaluator.logger.disabled = True
    Accuracy(device=device).attach(evaluator, "top1")
    TopKCategoricalAccuracy(k=5, device=device).attach(evaluator, "top5")
    Loss(criterion, device=device).attach(evaluator, "loss")
    return evaluator
