"""Engines and handlers in-process: equivalence with a plain loop, LR schedule, FPS, NaN guard."""

from __future__ import annotations

import copy

import pytest
import torch
from ignite.engine import Engine, Events
from torch import nn

from ignite_rn50 import device as dev
from ignite_rn50 import handlers
from ignite_rn50.engine import create_trainer, make_train_step
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


def test_step_returns_device_tensor_without_sync() -> None:
    model = build_model(18, 10)
    opt = dev.make_optimizer(model.parameters(), CPU, FP32, lr=0.1, momentum=0.9,
                             weight_decay=0.0, nesterov=False)
    step = make_train_step(model, opt, nn.CrossEntropyLoss(), CPU, FP32, None)
    engine = Engine(step)
    out = step(engine, _batches(1)[0])
    assert isinstance(out, torch.Tensor) and out.ndim == 0 and not out.requires_grad
    assert engine.state.step_dtype == torch.float32


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


def test_lr_schedule_state_round_trip() -> None:
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    schedule = handlers.LrSchedule(opt, [1], 0.5, 0, 0.1)
    opt.step()
    schedule.decay.step()
    state = schedule.state_dict()
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    again = handlers.LrSchedule(opt2, [1], 0.5, 0, 0.1)
    again.load_state_dict(state)
    assert again.decay.last_epoch == 1


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
