"""Engines and handlers in-process: equivalence with a plain loop, LR schedule, FPS, NaN guard."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from ignite.engine import Engine, Events
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ignite_rn50 import device as dev
from ignite_rn50 import handlers
from ignite_rn50.engine import create_trainer, make_train_step
from ignite_rn50.errors import UserError
from ignite_rn50.model import build_model

CPU = torch.device("cpu")
FP32 = dev.Precision(False, None, "native")


def _batches(n: int, bs: int = 8, size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(7)
    return [(torch.randn(bs, 3, size, size, generator=gen),
             torch.randint(0, 10, (bs,), generator=gen)) for _ in range(n)]


def test_first_steps_equal_plain_pytorch_loop() -> None:
    torch.manual_seed(0)
    model = build_model(18, 10)
    reference = copy.deepcopy(model)
    batches = _batches(5)
    kwargs = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=False)

    optimizer = dev.make_optimizer(model.parameters(), CPU, FP32, **kwargs)
    trainer = create_trainer(make_train_step(model, optimizer, nn.CrossEntropyLoss(), CPU,
                                             FP32, None))
    losses: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED,
                              lambda e: losses.append(e.state.output.item()))
    trainer.run(batches, max_epochs=1)

    plain_opt = torch.optim.SGD(reference.parameters(), **kwargs)
    plain: list[float] = []
    for x, y in batches:
        reference.train()
        loss = nn.functional.cross_entropy(reference(x), y)
        plain_opt.zero_grad()
        loss.backward()
        plain_opt.step()
        plain.append(loss.item())
    assert len(losses) == 5
    assert losses == pytest.approx(plain, abs=1e-6)
    for a, b in zip(model.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)


class _HostReads(TorchDispatchMode):
    """Every aten op that moves a tensor's value to the host (``.item()``, ``bool()``,
    ``.tolist()``): on an accelerator each is a device sync."""

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine, self.at_iterations = engine, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default):
            self.at_iterations.append(self.engine.state.iteration)
        return func(*args, **(kwargs or {}))


def test_steps_read_nothing_back_between_print_points() -> None:
    """The step and every per-step handler of the trainer leave values on the device; the
    host reads them only at --print-freq points (and at the epoch end)."""
    model = build_model(18, 10)
    opt = dev.make_optimizer(model.parameters(), CPU, FP32, lr=0.1, momentum=0.9,
                             weight_decay=0.0, nesterov=False)
    engine = create_trainer(make_train_step(model, opt, nn.CrossEntropyLoss(), CPU, FP32, None))
    handlers.FpsMeter(CPU, 8, warmup=2).attach(engine)
    handlers.LrSchedule(opt, [1], 0.5, warmup_iters=3, warmup_factor=0.1).attach(engine)
    handlers.LossTracker(CPU, 4, lambda e, loss: None).attach(engine)
    handlers.GracefulStop().attach(engine, every=4)
    reads = _HostReads(engine)
    engine.add_event_handler(Events.STARTED, lambda _: reads.__enter__())
    engine.add_event_handler(Events.COMPLETED, lambda _: reads.__exit__(None, None, None))
    engine.run(_batches(8), max_epochs=1)
    assert isinstance(engine.state.output, torch.Tensor) and engine.state.output.ndim == 0
    assert not engine.state.output.requires_grad
    assert engine.state.step_dtype == torch.float32
    assert reads.at_iterations, "the print points do read the loss"
    assert set(reads.at_iterations) <= {4, 8}, reads.at_iterations


def test_lr_values_at_epoch_boundaries_and_warmup() -> None:
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    schedule = handlers.LrSchedule(opt, [2, 4], 0.2, warmup_iters=3, warmup_factor=0.1)
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


def _lrs_per_iteration(schedule: handlers.LrSchedule, opt: torch.optim.Optimizer,
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
    def fresh() -> tuple[handlers.LrSchedule, torch.optim.Optimizer]:
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.2)
        return handlers.LrSchedule(opt, [2, 3], 0.5, warmup_iters=8, warmup_factor=0.1,
                                   policy=policy, epochs=4, min_lr=0.0), opt

    full, _ = _lrs_per_iteration(*fresh(), iterations=12, epoch_length=3)
    first, state = _lrs_per_iteration(*fresh(), iterations=6, epoch_length=3)
    assert state["schedule"]["warmup"]["last_epoch"] < 8  # saved in the middle of warm-up
    rest, _ = _lrs_per_iteration(*fresh(), iterations=12, epoch_length=3, start=state)
    assert first + rest == pytest.approx(full)
    assert full[0] == pytest.approx(0.02) and len(set(full)) > 6


def test_cosine_policy_is_mmcv_cosine_annealing_by_epoch() -> None:
    """mmcv CosineAnnealing(min_lr, by_epoch): epoch e (0-based) runs at
    min + (lr - min)(1 + cos(pi e / E)) / 2, the same for every step of the epoch."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.2)
    schedule = handlers.LrSchedule(opt, [60], 0.2, 0, 0.1, policy="cosine", epochs=200,
                                   min_lr=0.0)
    lrs, _ = _lrs_per_iteration(schedule, opt, iterations=400, epoch_length=2)
    expected = [0.1 * (1 + math.cos(math.pi * e / 200)) for e in range(200)]
    assert lrs[::2] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert lrs[1::2] == lrs[::2]
    assert lrs[0] == 0.2 and lrs[-1] == pytest.approx(0.2 * 6.168e-5, rel=1e-3)


def test_resume_refuses_another_lr_policy_or_horizon() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.2)
    step = handlers.LrSchedule(opt, [60], 0.2, 0, 0.1).state_dict()
    cosine = handlers.LrSchedule(opt, [], 0.2, 0, 0.1, policy="cosine", epochs=200)
    with pytest.raises(UserError, match="--lr-policy step"):
        cosine.load_state_dict(step)
    other = handlers.LrSchedule(opt, [], 0.2, 0, 0.1, policy="cosine", epochs=100)
    with pytest.raises(UserError, match="over 200 epochs .* this run over 100"):
        other.load_state_dict(cosine.state_dict())
    old = {"decay": step["decay"], "warmup": None}  # written before the policy option
    handlers.LrSchedule(opt, [60], 0.2, 0, 0.1).load_state_dict(old)


def test_logged_lr_is_the_lr_the_step_used_during_warmup() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = handlers.LrSchedule(opt, [100], 0.2, warmup_iters=6, warmup_factor=0.1)
    used: dict[int, float] = {}

    def step(engine: Engine, batch: int) -> torch.Tensor:
        used[engine.state.iteration] = opt.param_groups[0]["lr"]
        opt.step()
        return torch.tensor(1.0)

    engine = Engine(step)
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


def test_fps_meter_counts_steady_state_images() -> None:
    import time

    meter = handlers.FpsMeter(CPU, batch_per_process=4, warmup=2)

    def step(engine: Engine, batch: int) -> None:
        time.sleep(0.5 if engine.state.iteration % 10 == 1 else 0.02)  # slow first step

    engine = Engine(step)
    meter.attach(engine)
    engine.run(range(10), max_epochs=2)
    # per epoch: 10 iterations, window opens after 2 -> 8 steps x 4 images
    assert meter.total_images == 2 * 8 * 4
    # 4 images per 20 ms step = 200 img/s; the slow warm-up step stays outside the window
    assert 100 < meter.fps <= 200 and meter.epoch_data_wait < 0.2


def test_loss_tracker_stops_at_first_nonfinite_loss() -> None:
    values = [1.0, 2.0, 3.0, float("nan"), 5.0, 6.0, 7.0, 8.0]
    engine = Engine(lambda e, b: torch.tensor(values[e.state.iteration - 1]))
    printed: list[float] = []
    tracker = handlers.LossTracker(CPU, print_freq=2, on_print=lambda e, v: printed.append(v))
    tracker.attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED, tracker.epoch_completed)
    with pytest.raises(handlers.NonFiniteLoss) as info:
        engine.run(range(4), max_epochs=2)
    assert (info.value.epoch, info.value.iteration) == (1, 4)
    assert printed == [1.5]


def test_loss_tracker_epoch_mean() -> None:
    engine = Engine(lambda e, b: torch.tensor(float(e.state.iteration)))
    tracker = handlers.LossTracker(CPU, print_freq=100, on_print=lambda e, v: None)
    tracker.attach(engine)
    means: list[float] = []
    engine.add_event_handler(Events.EPOCH_COMPLETED,
                             lambda e: (tracker.epoch_completed(e), means.append(
                                 tracker.epoch_loss)))
    engine.run(range(4), max_epochs=2)
    assert means == [2.5, 6.5]


def test_nonfinite_weights_after_last_step_stop_before_saving() -> None:
    param = nn.Parameter(torch.ones(3))
    model = nn.Module()
    model.p = param

    def step(engine: Engine, batch: int) -> torch.Tensor:
        if engine.state.iteration == 4:  # the last update of epoch 2 poisons the weights
            param.data.fill_(float("nan"))
        return torch.tensor(1.0)  # every loss that is checked is finite

    engine = Engine(step)
    tracker = handlers.LossTracker(CPU, print_freq=100, on_print=lambda e, v: None)
    tracker.attach(engine)
    saved: list[int] = []

    @engine.on(Events.EPOCH_COMPLETED)
    def end_epoch(e: Engine) -> None:  # the order run.py uses: check, then evaluate and save
        tracker.epoch_completed(e)
        handlers.check_finite_weights(model, e)
        saved.append(e.state.epoch)

    with pytest.raises(handlers.Diverged, match="weights became NaN/inf at epoch 2, "
                                                "iteration 2"):
        engine.run(range(2), max_epochs=3)
    assert saved == [1]
