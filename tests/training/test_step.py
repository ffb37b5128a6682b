"""The train step and its Engine in-process (``training/step.py``): equal to a plain PyTorch
loop, and nothing read back to the host between print points."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from ignite_rn50.data.mixing import BatchMix, MixSpec
from ignite_rn50.model.resnet import build_model
from ignite_rn50.optim.schedule import LrSchedule, ScheduleSpec
from ignite_rn50.system import precision as prec
from ignite_rn50.system.signals import GracefulStop
from ignite_rn50.training import handlers
from ignite_rn50.training.assembly import StepOptions
from ignite_rn50.training.step import (
    AccumulatingUpdate,
    Inputs,
    StepFacts,
    TrainStep,
    Update,
    create_trainer,
    make_train_step,
)

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


# --- --accum-steps and --clip-grad-norm ------------------------------------------------------

def _no_bn_model() -> nn.Module:
    """A model without batch statistics: accumulation must equal one big step exactly."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 10))


def _steps(model: nn.Module, accum: int, batches: list, clip: float | None = None
           ) -> TrainStep:
    opt = prec.make_optimizer(model.parameters(), CPU, FP32, prec.Sgd(0.1, 0.9, 5e-4, False))
    step = make_train_step(model, opt, nn.CrossEntropyLoss(), AMP32,
                           options=StepOptions(accum, clip))
    create_trainer(step).run(batches, max_epochs=1)
    return step


def test_two_micro_batches_of_16_equal_one_step_of_32() -> None:
    batches = _batches(3, bs=32)
    one, two = _no_bn_model(), _no_bn_model()
    _steps(one, 1, batches)
    _steps(two, 2, batches)
    for (name, a), b in zip(one.state_dict().items(), two.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    assert not torch.equal(one[0].weight, _no_bn_model()[0].weight)  # it did train


def test_accumulation_on_resnet_differs_only_by_batch_norm() -> None:
    """ResNet-18: with BN on running statistics (eval mode) 2 x 16 is one step of 32; with
    batch statistics (train mode) the micro-batches normalise over 16 images, not 32."""
    batches = _batches(1, bs=32)
    diffs = {}
    for bn_train in (False, True):
        models = [build_model(18, 10) for _ in range(2)]
        models[1].load_state_dict(models[0].state_dict())
        for model, accum in zip(models, (1, 2), strict=True):
            opt = prec.make_optimizer(model.parameters(), CPU, FP32, prec.Sgd(0.1, 0.0, 0.0,
                                                                             False))
            model.train(bn_train)
            update = AccumulatingUpdate(Update(model, opt, nn.CrossEntropyLoss(), AMP32),
                                        StepOptions(accum), StepFacts())
            update(*batches[0])
        diffs[bn_train] = max((a - b).abs().max().item() for a, b in zip(
            models[0].parameters(), models[1].parameters(), strict=True))
    assert diffs[False] < 1e-6, diffs
    assert diffs[True] > 1e-4, diffs  # BN's batch statistics (about 1e-2 here)


def test_a_last_partial_batch_is_weighted_by_its_images() -> None:
    """--no-drop-last: a batch of 20 in 2 micro-batches (10 + 10) or 3 (7 + 7 + 6) gives the
    gradient of the batch's mean loss, as one step of 20."""
    batches = _batches(2, bs=20)
    ref = _no_bn_model()
    _steps(ref, 1, batches)
    for accum in (2, 3):
        model = _no_bn_model()
        _steps(model, accum, batches)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(
            ref.parameters(), model.parameters(), strict=True)), accum


def test_clipped_accumulated_ema_steps_read_nothing_back_between_print_points() -> None:
    from ignite_rn50.training.ema import Ema

    model = build_model(18, 10)
    opt = prec.make_optimizer(model.parameters(), CPU, FP32, prec.Sgd(0.1, 0.9, 0.0, False))
    step = make_train_step(model, opt, nn.CrossEntropyLoss(), AMP32,
                           options=StepOptions(accum_steps=2, clip_grad_norm=0.5))
    engine = create_trainer(step)
    Ema(model, 0.01).attach(engine)
    handlers.LossTracker(CPU, 4, lambda e, loss: float(step.facts.grad_norm)).attach(engine)
    at: list[tuple[int, str]] = []
    modes = [_HostReadCalls(engine, at), _HostReads(engine, at)]
    engine.add_event_handler(Events.STARTED, lambda _: [m.__enter__() for m in modes])
    engine.add_event_handler(Events.COMPLETED,
                             lambda _: [m.__exit__(None, None, None) for m in modes[::-1]])
    engine.run(_batches(8), max_epochs=1)
    assert at and {iteration for iteration, _ in at} <= {4, 8}, at
    assert step.facts.grad_norm is not None and float(step.facts.grad_norm) > 0.5


def _accum_rank(rank: int, port: int, out: str, accum: int) -> None:
    """One of two gloo processes: DDP over the model without batch statistics, this rank's
    half of every batch in ``accum`` micro-batches; counts DDP's gradient all-reduces."""
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    torch.set_num_threads(1)
    model = _no_bn_model()
    ddp = nn.parallel.DistributedDataParallel(model)
    reduced: list[int] = []

    def counting(state, bucket):  # noqa: ANN001, ANN202 - DDP checks the annotations
        state.append(1)
        return default_hooks.allreduce_hook(None, bucket)

    ddp.register_comm_hook(reduced, counting)
    opt = prec.make_optimizer(ddp.parameters(), CPU, FP32, prec.Sgd(0.1, 0.9, 5e-4, False))
    step = make_train_step(ddp, opt, nn.CrossEntropyLoss(), AMP32,
                           options=StepOptions(accum))
    mine = [(x[rank * 16:(rank + 1) * 16], y[rank * 16:(rank + 1) * 16])
            for x, y in _batches(3, bs=32)]
    create_trainer(step).run(mine, max_epochs=1)
    torch.save({"model": model.state_dict(), "reduced": len(reduced)}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
def test_accumulation_in_two_processes_equals_one_process_step(tmp_path: Path) -> None:
    """2 gloo processes x 2 micro-batches of 8 = one step of 32 in one process; DDP
    all-reduces only in each step's last backward: once per step (the tiny model is one
    bucket), not once per micro-batch."""
    from tests.helpers import free_port

    ref = _no_bn_model()
    _steps(ref, 1, _batches(3, bs=32))
    torch.multiprocessing.spawn(_accum_rank, args=(free_port(), str(tmp_path), 2), nprocs=2)
    for rank in (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)):
        for name, value in ref.state_dict().items():
            assert torch.allclose(rank["model"][name], value, atol=1e-6), name
        assert rank["reduced"] == 3, rank["reduced"]
