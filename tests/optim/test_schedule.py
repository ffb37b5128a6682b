"""The lr policies (``optim/schedule.py``): values at epoch boundaries and in warm-up, mmcv's
cosine and linear warm-up, resumes mid-warm-up, old and mismatched schedule states, and the
lr the log shows being the lr the step used."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from ignite.engine import Engine, Events
from torch import nn

from ignite_rn50 import events
from ignite_rn50.errors import UserError
from ignite_rn50.optim.schedule import LrSchedule, ScheduleSpec
from ignite_rn50.training import handlers

CPU = torch.device("cpu")


def test_lr_values_at_epoch_boundaries_and_warmup() -> None:
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    schedule = LrSchedule(opt, ScheduleSpec(0.1, milestones=(2, 4), gamma=0.2, warmup_iters=3,
                                            warmup_factor=0.1))
    engine = Engine(lambda e, b: opt.step())
    schedule.attach(engine)
    seen: dict[tuple[int, int], float] = {}
    engine.add_event_handler(Events.ITERATION_STARTED, lambda e: seen.__setitem__(
        (e.state.epoch, e.state.iteration), schedule.lr))
    engine.run(range(2), max_epochs=5)
    # warm-up over iterations 1..3 from 0.1*lr, then the epoch-wise decay at 2 and 4
    assert seen[(1, 1)] == pytest.approx(0.01)
    assert seen[(1, 2)] == pytest.approx(0.04)
    assert seen[(2, 3)] == pytest.approx(0.07)
    assert seen[(2, 4)] == pytest.approx(0.1)
    assert seen[(3, 5)] == pytest.approx(0.02)
    assert seen[(4, 8)] == pytest.approx(0.02)
    assert seen[(5, 9)] == pytest.approx(0.004)


def _lrs_per_iteration(schedule: LrSchedule, opt: torch.optim.Optimizer,
                       iterations: int, epoch_length: int, start: dict | None = None
                       ) -> tuple[list[float], dict]:
    """The lr each step runs with, from a (resumed) trainer; and the state at the end."""
    engine = Engine(lambda e, b: opt.step())
    schedule.attach(engine)
    seen: list[float] = []
    engine.add_event_handler(Events.ITERATION_STARTED, lambda e: seen.append(schedule.lr))
    if start is not None:  # what a checkpoint restores: optimizer, schedule, trainer
        opt.load_state_dict(start["optimizer"])
        schedule.load_state_dict(start["schedule"])
        engine.load_state_dict(start["engine"])
    engine.run(range(epoch_length), max_epochs=iterations // epoch_length)
    return seen, {"optimizer": copy.deepcopy(opt.state_dict()),
                  "schedule": copy.deepcopy(schedule.state_dict()),
                  "engine": engine.state_dict()}


@pytest.mark.parametrize("policy", ["step", "cosine"])
def test_lr_schedule_with_warmup_resumes_mid_warmup(policy: str) -> None:
    """Saved after 2 epochs of 3 iterations with warm-up over 8: the resumed schedule goes on
    exactly as the uninterrupted one (warm-up and epoch policy)."""
    def fresh() -> tuple[LrSchedule, torch.optim.Optimizer]:
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.2)
        return LrSchedule(opt, ScheduleSpec(0.2, policy=policy, milestones=(2, 3), gamma=0.5,
                                            epochs=4, warmup_iters=8, warmup_factor=0.1)), opt

    full, _ = _lrs_per_iteration(*fresh(), iterations=12, epoch_length=3)
    first, state = _lrs_per_iteration(*fresh(), iterations=6, epoch_length=3)
    assert state["engine"]["iteration"] == 6 < 8  # saved in the middle of warm-up
    rest, _ = _lrs_per_iteration(*fresh(), iterations=12, epoch_length=3, start=state)
    assert first + rest == pytest.approx(full)
    assert full[0] == pytest.approx(0.02) and len(set(full)) > 6


def test_cosine_policy_is_mmcv_cosine_annealing_by_epoch() -> None:
    """mmcv CosineAnnealing(min_lr, by_epoch): epoch e (0-based) runs at
    min + (lr - min)(1 + cos(pi e / E)) / 2, the same for every step of the epoch."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.2)
    schedule = LrSchedule(opt, ScheduleSpec(0.2, policy="cosine", epochs=200, min_lr=0.0))
    lrs, _ = _lrs_per_iteration(schedule, opt, iterations=400, epoch_length=2)
    expected = [0.1 * (1 + math.cos(math.pi * e / 200)) for e in range(200)]
    assert lrs[::2] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert lrs[1::2] == lrs[::2]
    assert lrs[0] == 0.2 and lrs[-1] == pytest.approx(0.2 * 6.168e-5, rel=1e-3)


def test_resume_refuses_another_lr_policy_or_horizon() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.2)
    step = LrSchedule(opt, ScheduleSpec(0.2, milestones=(60,))).state_dict()
    cosine = LrSchedule(opt, ScheduleSpec(0.2, policy="cosine", epochs=200))
    with pytest.raises(UserError, match="--lr-policy step"):
        cosine.load_state_dict(step)
    other = LrSchedule(opt, ScheduleSpec(0.2, policy="cosine", epochs=100))
    with pytest.raises(UserError, match="over 200 epochs .* this run over 100"):
        other.load_state_dict(cosine.state_dict())
    LrSchedule(opt, ScheduleSpec(0.2, epochs=7)).load_state_dict(step)  # step: no horizon


def test_resume_reads_the_schedule_state_of_earlier_versions() -> None:
    """Checkpoints before this version hold torch schedulers' states (MultiStepLR or
    CosineAnnealingLR under "decay", LinearLR or None under "warmup"); before the cosine
    policy they had no "policy" key."""
    sched = torch.optim.lr_scheduler
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.2)
    multistep = {"decay": sched.MultiStepLR(opt, [60]).state_dict(), "warmup": None}
    cosine = {"policy": "cosine", "decay": sched.CosineAnnealingLR(opt, T_max=200).state_dict(),
              "warmup": sched.LinearLR(opt, 0.1, total_iters=5).state_dict()}
    LrSchedule(opt, ScheduleSpec(0.2, milestones=(60,))).load_state_dict(multistep)
    LrSchedule(opt, ScheduleSpec(0.2, policy="cosine", epochs=200)).load_state_dict(cosine)
    with pytest.raises(UserError, match="over 200 epochs .* this run over 50"):
        LrSchedule(opt, ScheduleSpec(0.2, policy="cosine", epochs=50)).load_state_dict(cosine)
    with pytest.raises(UserError, match="--lr-policy step"):
        LrSchedule(opt, ScheduleSpec(0.2, policy="cosine", epochs=200)).load_state_dict(
            multistep)


def test_warmup_by_epochs_is_mmcv_linear_warmup_on_the_epoch_lr() -> None:
    """mmcv's warmup='linear', warmup_by_epoch: W = epochs x iterations per epoch; iteration
    g (0-based) runs at regular(epoch) x (1 - (1 - g/W)(1 - ratio)) while g < W; a warm-up
    longer than the run (the package's perf runs: 20 epochs' warm-up in 2 epochs) is fine."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.6)
    spec = ScheduleSpec(1.6, policy="cosine", epochs=200, warmup_iters=20 * 5,
                        warmup_factor=1e-3)
    lrs, _ = _lrs_per_iteration(LrSchedule(opt, spec), opt, iterations=10, epoch_length=5)
    for g, lr in enumerate(lrs):
        regular = 0.8 * (1 + math.cos(math.pi * (g // 5) / 200))
        assert lr == pytest.approx(regular * (1 - (1 - g / 100) * (1 - 1e-3)), rel=1e-12)
    assert lrs[0] == pytest.approx(1.6e-3) and lrs[-1] < 0.15


def test_logged_lr_is_the_lr_the_step_used_during_warmup() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = LrSchedule(opt, ScheduleSpec(0.1, milestones=(100,), gamma=0.2, warmup_iters=6,
                                            warmup_factor=0.1))
    used: dict[int, float] = {}

    def step(engine: Engine, batch: int) -> torch.Tensor:
        used[engine.state.iteration] = opt.param_groups[0]["lr"]
        opt.step()
        return torch.tensor(1.0)

    engine = Engine(step)
    events.register(engine)
    schedule.attach(engine)
    logged: dict[int, float] = {}
    interval = handlers.IntervalLog(lambda: schedule.lr, 8, 1, None)
    interval.attach(engine)

    def on_print(e: Engine, loss: float) -> None:
        interval(e, loss)
        logged[e.state.iteration] = e.state.metrics["lr"]

    handlers.LossTracker(CPU, 1, on_print).attach(engine)
    engine.run(range(8), max_epochs=1)
    assert logged == used and logged[1] == pytest.approx(0.01)
    assert logged[7] == pytest.approx(0.1) and logged[2] == pytest.approx(0.025)
