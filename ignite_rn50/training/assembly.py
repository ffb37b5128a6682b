"""A run's model, optimiser and precision put together, in the order each requires (the
train step and the engines that use them are ``step.py``). The one file read is --init-from's
weights."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ignite_rn50.config import specs
from ignite_rn50.config.declaration import Config
from ignite_rn50.data.mixing import BatchMix
from ignite_rn50.model import weights
from ignite_rn50.model.resnet import build_model, resolve_stem
from ignite_rn50.optim.schedule import LrSchedule
from ignite_rn50.system import device as dev
from ignite_rn50.system import distributed
from ignite_rn50.system import precision as prec
from ignite_rn50.training.dataflow import Dataflow
from ignite_rn50.training.ema import Ema
from ignite_rn50.training.runtime import Runtime

log = logging.getLogger("ignite_rn50")


@dataclass(frozen=True)
class StepOptions:
    """--accum-steps and --clip-grad-norm (both off: the plain ``Update``)."""

    accum_steps: int = 1
    clip_grad_norm: float | None = None

    @property
    def plain(self) -> bool:
        return self.accum_steps == 1 and self.clip_grad_norm is None


@dataclass
class Parts:
    """The model and what trains and scores it: the train step's pieces and the evaluator's
    (``eval_criterion``); checkpoints.setup_checkpoints picks what to save."""

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
    step: StepOptions = StepOptions()  # accumulation and clipping
    ema: Any = None  # training.ema.Ema when --ema-momentum is set


def build_parts(cfg: Config, rt: Runtime, data: Dataflow) -> Parts:
    """Model (from --init-from's weights if given), then optimiser, apex, DDP and
    compilation, in the order each requires: apex casts the model before DDP wraps it, and
    DDP broadcasts rank 0's weights."""
    memory_format = dev.memory_format(cfg.channels_last)
    model = build_model(cfg.depth, data.num_classes, resolve_stem(cfg.stem, data.image_size))
    if cfg.init_from is not None:
        layout = weights.load_into(model, Path(cfg.init_from), flag="--init-from")
        if rt.is_main:
            log.info("initialised from %s (%s layout; optimizer, schedule and epochs start "
                     "fresh)", cfg.init_from, layout)
    model = model.to(rt.device, memory_format=memory_format)
    if cfg.sync_bn:  # before the optimiser and DDP: the converted layers keep the parameters
        model = dev.convert_sync_batchnorm(model, rt.device)
    optimizer = prec.make_optimizer(model.parameters(), rt.device, rt.precision,
                                    prec.Sgd(cfg.lr, cfg.momentum, cfg.weight_decay,
                                             cfg.nesterov))
    if rt.precision.backend == "apex":
        model, optimizer = prec.apex_initialize(model, optimizer, rt.device, rt.precision)
    net = distributed.wrap_ddp(model, rt.device) if rt.processes > 1 else model
    if cfg.compile:
        net = dev.compile_model(net, rt.device)
    schedule = LrSchedule(optimizer, specs.schedule_spec(cfg, len(data.train)))
    mixing = specs.mix_spec(cfg)
    ema = Ema(model, cfg.ema_momentum) if cfg.ema_momentum is not None else None
    return Parts(model=model, net=net, optimizer=optimizer,
                 scaler=prec.make_grad_scaler(rt.device, rt.precision),
                 criterion=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing).to(rt.device),
                 eval_criterion=nn.CrossEntropyLoss().to(rt.device), schedule=schedule,
                 precision=rt.precision, memory_format=memory_format,
                 mix=BatchMix(mixing, data.num_classes, rt.device, stream=(cfg.seed, rt.rank),
                              batch_size=data.batch_per_process)
                 if mixing.enabled else None,
                 step=StepOptions(cfg.accum_steps, cfg.clip_grad_norm), ema=ema)
