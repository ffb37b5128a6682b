"""The trainer's handlers (``training/handlers.py``): steady-state FPS, the loss tracker's
epoch mean and its stop at the first NaN/inf loss."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from ignite_rn50.errors import NonFiniteLoss
from ignite_rn50.training import handlers
from tests.helpers import TINY, read_summary, run_main

CPU = torch.device("cpu")


class _Clock:
    """A clock the steps advance by what they would take: the figures are exact."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_fps_meter_counts_steady_state_images() -> None:
    clock = _Clock()
    meter = handlers.FpsMeter(CPU, warmup=2, clock=clock)

    def step(engine: Engine, batch: int) -> None:
        clock.now += 0.5 if engine.state.iteration % 10 == 1 else 0.02  # slow first step

    class Batches:  # each batch (4 images) takes 4 ms to fetch
        def __iter__(self):
            for i in range(10):
                clock.now += 0.004
                yield i, torch.zeros(4)

        def __len__(self) -> int:
            return 10

    engine = Engine(step)
    meter.attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED, meter.epoch_completed)
    engine.run(Batches(), max_epochs=2)
    # per epoch: 10 iterations, the window opens after 2 -> 8 steps x 4 images in 8 x 24 ms;
    # the slow first step stays outside it
    assert meter.total_images == 2 * 8 * 4
    assert meter.fps == pytest.approx(32 / 0.192, rel=1e-6)
    assert meter.epoch_fps == pytest.approx(32 / 0.192, rel=1e-6)
    assert meter.epoch_data_wait == pytest.approx(0.032 / 0.192, rel=1e-6)


def test_loss_tracker_stops_at_first_nonfinite_loss() -> None:
    values = [1.0, 2.0, 3.0, float("nan"), 5.0, 6.0, 7.0, 8.0]
    engine = Engine(lambda e, b: torch.tensor(values[e.state.iteration - 1]))
    printed: list[float] = []
    tracker = handlers.LossTracker(CPU, print_freq=2, on_print=lambda e, v: printed.append(v))
    tracker.attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED, tracker.epoch_completed)
    with pytest.raises(NonFiniteLoss) as info:
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


def test_nan_loss_stops_with_epoch_and_iteration(tmp_path: Path) -> None:
    out = tmp_path / "nan"
    proc = run_main([*TINY, "--lr", "1e12", "--epochs", "3", "--print-freq", "1",
                    "--output-dir", str(out)])
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    line = [ln for ln in proc.stdout.splitlines() if "NaN/inf" in ln]
    assert len(line) == 1 and re.search(r"loss became NaN/inf at epoch 1, iteration [1-8]\b",
                                        line[0]), proc.stdout[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not list(out.glob("*.pt"))  # the diverged epoch was neither evaluated nor saved
    assert read_summary(out)["epochs_completed"] == 0
