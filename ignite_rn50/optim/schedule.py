"""Learning-rate policies: the lr of every iteration as a function of (epoch, iteration).

A policy gives the lr of an epoch (mmcv's "regular" lr, by epoch); an optional linear
warm-up scales it over the first iterations, with mmcv's arithmetic. A new policy is one
entry in ``POLICIES``. Because the lr is a pure function of the trainer's position, a
resumed run (at an epoch boundary or mid-epoch, mid-warm-up too) gets exactly the lrs of an
uninterrupted one; the checkpoint only records what must match (policy, horizon).

Ours, not torch's chainable schedulers: those compute each lr from the previous one, so the
order in which two of them step (warm-up and decay) and the event they step at decide the
result; mmcv, which the package ran, computes each lr in closed form, as here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ignite_rn50.errors import UserError

if TYPE_CHECKING:
    import torch
    from ignite.engine import Engine


@dataclass(frozen=True)
class ScheduleSpec:
    """Everything the lr of an iteration depends on."""

    lr: float
    policy: str = "step"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    min_lr: float = 0.0
    epochs: int = 1
    warmup_iters: int = 0
    warmup_factor: float = 0.1  # mmcv's warmup_ratio: the lr factor at the first iteration


def step_lr(spec: ScheduleSpec, epoch: int) -> float:
    """x ``gamma`` at each milestone epoch (mmcv "step"); repeated multiplication, as torch's
    MultiStepLR does, so the lrs are those of earlier versions to the last bit."""
    lr = spec.lr
    for milestone in spec.milestones:
        if epoch >= milestone:
            lr *= spec.gamma
    return lr


def cosine_lr(spec: ScheduleSpec, epoch: int) -> float:
    """mmcv's CosineAnnealing by epoch: epoch e runs at min + (lr - min)(1 + cos(pi e/E))/2."""
    cos_out = math.cos(math.pi * epoch / spec.epochs) + 1
    return spec.min_lr + 0.5 * (spec.lr - spec.min_lr) * cos_out


@dataclass(frozen=True)
class LrPolicy:
    epoch_lr: Callable[[ScheduleSpec, int], float]  # (spec, 0-based epoch) -> lr
    help: str
    horizon: bool  # whether the lrs depend on --epochs (a resume must keep it)


POLICIES: dict[str, LrPolicy] = {
    "step": LrPolicy(step_lr, "x --lr-gamma at each --lr-milestones epoch", horizon=False),
    "cosine": LrPolicy(cosine_lr, "cosine annealing from --lr to --min-lr over --epochs",
                       horizon=True),
}


def lr_at(spec: ScheduleSpec, epoch: int, done_iters: int) -> float:
    """The lr of the iteration that follows ``done_iters`` finished ones, in 0-based ``epoch``.
    mmcv's linear warm-up: factor 1 - (1 - i/W)(1 - ratio), from ratio to 1 over W iterations."""
    regular = POLICIES[spec.policy].epoch_lr(spec, epoch)
    if done_iters >= spec.warmup_iters:
        return regular
    k = (1 - done_iters / spec.warmup_iters) * (1 - spec.warmup_factor)
    return regular * (1 - k)


class LrSchedule:
    """Sets the optimizer's lr before each epoch and, during warm-up, before each iteration,
    so the lr during and after a step is the lr that step used (what the log line shows);
    ``epoch_lr`` is the lr of the epoch's first iteration."""

    def __init__(self, optimizer: torch.optim.Optimizer, spec: ScheduleSpec) -> None:
        self.optimizer, self.spec = optimizer, spec
        self.epoch_lr = self.lr
        self._epoch = 0

    def attach(self, engine: Engine) -> None:
        from ignite.engine import Events  # here: config reads POLICIES before torch loads

        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        if self.spec.warmup_iters > 0:
            engine.add_event_handler(Events.ITERATION_STARTED, self._iteration_started)

    def _set(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _epoch_started(self, engine: Engine) -> None:
        self._epoch = engine.state.epoch - 1
        self._set(lr_at(self.spec, self._epoch, engine.state.iteration))
        self.epoch_lr = self.lr

    def _iteration_started(self, engine: Engine) -> None:
        done = engine.state.iteration - 1  # ignite counts the coming iteration already
        if done <= self.spec.warmup_iters:  # the first iteration after warm-up: regular lr
            self._set(lr_at(self.spec, self._epoch, done))

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.spec.policy, "epochs": self.spec.epochs,
                "warmup_iters": self.spec.warmup_iters}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Refuse a checkpoint whose lrs this run would not continue. Checkpoints of earlier
        versions hold torch schedulers' states: no policy means step, cosine's T_max is the
        horizon."""
        policy = state.get("policy", "step")
        if policy != self.spec.policy:
            raise UserError(f"checkpoint was written with --lr-policy {policy}, this run has "
                            f"{self.spec.policy}; pass --lr-policy {policy} to resume it")
        saved_epochs = state.get("epochs", state.get("decay", {}).get("T_max"))
        if POLICIES[policy].horizon and saved_epochs != self.spec.epochs:
            raise UserError(f"checkpoint anneals the lr over {saved_epochs} epochs ({policy}), "
                            f"this run over {self.spec.epochs}; pass --epochs {saved_epochs}")
