"""The train step and its Engine in-process (``training/step.py``): equal to a plain PyTorch
loop, and nothing read back to the host between print points."""

from __future__ import annotations

import copy

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
