"""Engines and handlers in-process: equivalence with a plain loop, LR schedule, FPS, NaN guard."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from ignite.engine import Engine, Events
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from ignite_rn50 import events
from ignite_rn50.data.mixing import BatchMix, MixSpec
from ignite_rn50.errors import NonFiniteLoss, UserError
from ignite_rn50.model.resnet import build_model
from ignite_rn50.optim.schedule import LrSchedule, ScheduleSpec
from ignite_rn50.system import precision as prec
from ignite_rn50.system.signals import GracefulStop
from ignite_rn50.training import handlers
from ignite_rn50.training.step import Inputs, create_trainer, make_train_step

CPU = torch.device("cpu")
FP32 = prec.Precision(False, None, "native")
AMP32 = prec.Amp(CPU, FP32)


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

    optimizer = prec.make_optimizer(model.parameters(), CPU, FP32, prec.Sgd(**kwargs))
    trainer = create_trainer(make_train_step(model, optimizer, nn.CrossEntropyLoss(), AMP32))
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


# what brings a tensor's values to the host (on an accelerator each one waits for the device)
HOST_READS = {"item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__",
              "__index__"}


class _HostReadCalls(TorchFunctionMode):
    """Every Tensor method call that reads values on the host (on CPU tensors ``.cpu()`` and
    ``.tolist()`` dispatch nothing, so only the call itself can be seen)."""

    def __init__(self, engine: Engine, at: list[tuple[int, str]]) -> None:
        super().__init__()
        self.engine, self.at = engine, at

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            self.at.append((self.engine.state.iteration, name))
        return func(*args, **(kwargs or {}))


class _HostReads(TorchDispatchMode):
    """Every aten op that moves a tensor's value to the host, whatever called it."""

    def __init__(self, engine: Engine, at: list[tuple[int, str]]) -> None:
        super().__init__()
        self.engine, self.at = engine, at

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default):
            self.at.append((self.engine.state.iteration, str(func)))
        return func(*args, **(kwargs or {}))


def test_host_read_detector_sees_every_kind_of_read() -> None:
    engine = Engine(lambda e, b: None)
    engine.state.iteration = 7
    at: list[tuple[int, str]] = []
    t = torch.arange(3.0)
    with _HostReadCalls(engine, at), _HostReads(engine, at):
        t.tolist()
        t.cpu()
        t.numpy()
        float(t[0])
        bool(t[1] > 0)
        t[2].item()
    names = {name for _, name in at}
    assert {"tolist", "cpu", "numpy", "__float__", "__bool__", "item"} <= names


@pytest.mark.parametrize("mixed", [False, True])
def test_steps_read_nothing_back_between_print_points(mixed: bool) -> None:
    """The step (with the mix recipe's mixup/cutmix and label smoothing too) and every
    per-step handler of the trainer leave values on the device; the host reads them only at
    --print-freq points (and at the epoch end)."""
    model = build_model(18, 10)
    opt = prec.make_optimizer(model.parameters(), CPU, FP32, prec.Sgd(0.1, 0.9, 0.0, False))
    mix = BatchMix(MixSpec.resolve(1.0, None, 1.0, None), 10, CPU, stream=(0, 0),
                   batch_size=8)
    step = make_train_step(model, opt, nn.CrossEntropyLoss(
        label_smoothing=0.1 if mixed else 0.0), AMP32, Inputs(CPU, mix=mix if mixed else None))
    engine = create_trainer(step)
    handlers.FpsMeter(CPU, warmup=2).attach(engine)
    LrSchedule(opt, ScheduleSpec(0.1, milestones=(1,), gamma=0.5, warmup_iters=3)).attach(engine)
    handlers.LossTracker(CPU, 4, lambda e, loss: None).attach(engine)
    GracefulStop().attach(engine, every=4)
    at: list[tuple[int, str]] = []
    modes = [_HostReadCalls(engine, at), _HostReads(engine, at)]
    engine.add_event_handler(Events.STARTED, lambda _: [m.__enter__() for m in modes])
    engine.add_event_handler(Events.COMPLETED,
                             lambda _: [m.__exit__(None, None, None) for m in modes[::-1]])
    engine.run(_batches(8), max_epochs=1)
    assert isinstance(engine.state.output, torch.Tensor) and engine.state.output.ndim == 0
    assert not engine.state.output.requires_grad
    assert step.facts.dtype == torch.float32
    assert at, "the print points do read the loss"
    assert {iteration for iteration, _ in at} <= {4, 8}, at


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
