"""--graph (``training/graph.py``): the capture wrapper's bookkeeping on CPU (static buffers,
warm-up, the lr that a captured step reads), and the clear refusals where no graph capture
exists. The capture itself needs a GPU: benchmarks/gpu_throughput.sh measures it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from torch import nn

from ignite_rn50.errors import UserError
from ignite_rn50.model.resnet import build_model
from ignite_rn50.optim.schedule import LrSchedule, ScheduleSpec
from ignite_rn50.system import precision as prec
from ignite_rn50.training import handlers
from ignite_rn50.training.graph import GraphedStep
from ignite_rn50.training.step import Update, create_trainer, make_train_step
from tests.helpers import TINY, assert_one_line_error, run_cli, run_main

CPU = torch.device("cpu")


FP32 = prec.Precision(False, None, "native")


AMP32 = prec.Amp(CPU, FP32)


def _batches(n: int, bs: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(3)
    return [(torch.randn(bs, 3, 8, 8, generator=gen), torch.randint(0, 10, (bs,), generator=gen))
            for _ in range(n)]


def _parts(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = build_model(18, 10)
    opt = prec.make_optimizer(model.parameters(), CPU, FP32, prec.Sgd(0.1, 0.9, 5e-4, False))
    return model, opt


def test_uncaptured_graphed_step_stages_batches_in_static_buffers_like_eager() -> None:
    """api=None (no device graph here): the bookkeeping a capture relies on, run eagerly."""
    model, opt = _parts()
    ref_model = copy.deepcopy(model)
    ref_opt = prec.make_optimizer(ref_model.parameters(), CPU, FP32,
                                prec.Sgd(0.1, 0.9, 5e-4, False))
    graphed = GraphedStep(Update(model, opt, nn.CrossEntropyLoss(), AMP32), opt,
                          api=None)
    eager = create_trainer(make_train_step(ref_model, ref_opt, nn.CrossEntropyLoss(), AMP32))
    eager_losses: list[float] = []
    eager.add_event_handler(Events.ITERATION_COMPLETED,
                            lambda e: eager_losses.append(e.state.output.item()))
    batches = _batches(4)
    eager.run(batches, max_epochs=1)
    pointers, losses = set(), []
    for images, targets in batches:
        model.train()
        loss, _ = graphed(images, targets)
        losses.append(loss.item())
        assert graphed.static is not None
        assert torch.equal(graphed.static[0], images)  # the batch was copied in
        pointers.add((graphed.static[0].data_ptr(), graphed.static[1].data_ptr()))
    assert len(pointers) == 1  # one pair of buffers, reused by every step
    assert graphed.eager_steps == 4 and graphed.graph is None  # no device: never captured
    assert losses == eager_losses
    for a, b in zip(model.state_dict().values(), ref_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_graphed_step_refuses_a_batch_of_another_shape() -> None:
    model, opt = _parts()
    graphed = GraphedStep(Update(model, opt, nn.CrossEntropyLoss(), AMP32), opt,
                          api=None)
    graphed(*_batches(1, bs=8)[0])
    with pytest.raises(UserError, match=r"batch of images \(4, 3, 8, 8\).*captured \(8, 3, 8, 8\)"):
        graphed(*_batches(1, bs=4)[0])


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_lr_reaches_the_step_through_a_device_tensor_refilled_on_change() -> None:
    """During capture the param groups hold the lr tensors the graph will read; outside it
    they hold floats (schedulers, checkpoints and logs see no change), and each change of
    the host value refills the tensor once."""
    model, opt = _parts()
    graphed = GraphedStep(Update(model, opt, nn.CrossEntropyLoss(), AMP32), opt,
                          api=None)
    with graphed.lr_as_tensors():
        inside = opt.param_groups[0]["lr"]
        assert isinstance(inside, torch.Tensor) and inside.item() == pytest.approx(0.1)
    assert isinstance(opt.param_groups[0]["lr"], float)
    assert opt.state_dict()["param_groups"][0]["lr"] == 0.1
    tensor = graphed.lr_tensors[0]
    assert graphed.refresh_lr() == 0  # unchanged: no device work
    opt.param_groups[0]["lr"] = 0.05  # what the schedule does at an epoch's start
    assert graphed.refresh_lr() == 1 and tensor.item() == pytest.approx(0.05)
    assert graphed.refresh_lr() == 0
    opt.param_groups[0]["lr"] = 0.025
    assert graphed.refresh_lr() == 1 and tensor.item() == pytest.approx(0.025)
    with graphed.lr_as_tensors():
        assert opt.param_groups[0]["lr"] is tensor  # the same tensor the capture recorded


def test_graph_refused_on_cpu(tmp_path: Path) -> None:
    assert_one_line_error(run_main([*TINY, "--graph", "--output-dir", str(tmp_path / "o")]),
                          "--graph", "--device cuda or npu")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("extra, needle", [
    (["--nproc", "2"], "--graph with several processes"),
    (["--compile"], "--graph and --compile"),
])
def test_graph_combinations_refused(tmp_path: Path, extra: list[str], needle: str) -> None:
    assert_one_line_error(run_main([*TINY, "--graph", *extra, "--output-dir",
                                   str(tmp_path / "o")]), needle)


@pytest.mark.slow
def test_graph_and_compile_refused_on_standin_npu(tmp_path: Path,
                                                  standin_env: dict[str, str]) -> None:
    assert_one_line_error(run_cli([*TINY, "--device", "npu", "--graph", "--output-dir",
                                   str(tmp_path / "o")], env=standin_env), "no graph capture")
    assert_one_line_error(run_cli([*TINY, "--device", "npu", "--compile", "--output-dir",
                                   str(tmp_path / "o2")], env=standin_env),
                          "--compile on npu needs torchair")


def _trainer_losses(step: object, opt: torch.optim.Optimizer) -> tuple[list[float], float]:
    engine = Engine(step)
    schedule = LrSchedule(opt, ScheduleSpec(0.1, milestones=(1, 2), gamma=0.5))
    schedule.attach(engine)
    printed: list[float] = []
    handlers.LossTracker(CPU, 2, lambda e, v: printed.append(v)).attach(engine)
    engine.run(_batches(4), max_epochs=3)
    return printed, schedule.lr


def test_trainer_engine_with_uncaptured_graphed_step_equals_the_eager_trainer() -> None:
    """A GraphedStep (api=None: no capture on CPU) inside the trainer Engine: the trainer's
    handlers read its output and the schedule moves its lr exactly as with the eager step."""
    from ignite_rn50.training.step import Inputs, TrainStep

    model, opt = _parts()
    ref_model, ref_opt = _parts()
    update = Update(model, opt, nn.CrossEntropyLoss(), AMP32)
    graphed = TrainStep(model, GraphedStep(update, opt, api=None), Inputs(CPU), zero_grad=None)
    eager = make_train_step(ref_model, ref_opt, nn.CrossEntropyLoss(), AMP32)
    printed, lr = _trainer_losses(graphed, opt)
    expected, ref_lr = _trainer_losses(eager, ref_opt)
    assert len(printed) == 6 and printed == expected
    assert lr == ref_lr == pytest.approx(0.025)
