"""--graph: the capture wrapper's bookkeeping on CPU (static buffers, warm-up, the lr that a
captured step reads), and the clear refusals where no graph capture exists. The capture
itself needs a GPU: benchmarks/gpu_throughput.sh measures it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from torch import nn

from ignite_rn50 import device as dev
from ignite_rn50 import handlers
from ignite_rn50.engine import Update, create_trainer, make_train_step
from ignite_rn50.errors import UserError
from ignite_rn50.graph import GraphedStep
from ignite_rn50.model import build_model

from .conftest import TINY, assert_one_line_error, run_cli

CPU = torch.device("cpu")
FP32 = dev.Precision(False, None, "native")


def _batches(n: int, bs: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(3)
    return [(torch.randn(bs, 3, 8, 8, generator=gen), torch.randint(0, 10, (bs,), generator=gen))
            for _ in range(n)]


def _parts(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = build_model(18, 10)
    opt = dev.make_optimizer(model.parameters(), CPU, FP32, lr=0.1, momentum=0.9,
                             weight_decay=5e-4, nesterov=False)
    return model, opt


def test_graphed_step_stages_batches_in_static_buffers_and_trains_like_eager() -> None:
    model, opt = _parts()
    ref_model = copy.deepcopy(model)
    ref_opt = dev.make_optimizer(ref_model.parameters(), CPU, FP32, lr=0.1, momentum=0.9,
                                 weight_decay=5e-4, nesterov=False)
    graphed = GraphedStep(Update(model, opt, nn.CrossEntropyLoss(), CPU, FP32, None), opt,
                          api=None)
    eager = create_trainer(make_train_step(ref_model, ref_opt, nn.CrossEntropyLoss(), CPU,
                                           FP32, None))
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
    graphed = GraphedStep(Update(model, opt, nn.CrossEntropyLoss(), CPU, FP32, None), opt,
                          api=None)
    graphed(*_batches(1, bs=8)[0])
    with pytest.raises(UserError, match=r"batch of images \(4, 3, 8, 8\).*captured \(8, 3, 8, 8\)"):
        graphed(*_batches(1, bs=4)[0])


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_captured_lr_follows_the_schedule_through_a_device_tensor() -> None:
    """During capture the param groups hold the lr tensors the graph will read; outside it
    they hold floats (schedulers, checkpoints and logs see no change), and each change of
    the host value refills the tensor once."""
    model, opt = _parts()
    graphed = GraphedStep(Update(model, opt, nn.CrossEntropyLoss(), CPU, FP32, None), opt,
                          api=None)
    schedule = handlers.LrSchedule(opt, [1, 2], 0.5, 0, 0.1)
    with graphed.lr_as_tensors():
        inside = opt.param_groups[0]["lr"]
        assert isinstance(inside, torch.Tensor) and inside.item() == pytest.approx(0.1)
    assert isinstance(opt.param_groups[0]["lr"], float)
    assert opt.state_dict()["param_groups"][0]["lr"] == 0.1
    tensor = graphed.lr_tensors[0]
    assert graphed.refresh_lr() == 0  # unchanged: no device work
    schedule.decay.step()
    assert graphed.refresh_lr() == 1 and tensor.item() == pytest.approx(0.05)
    assert graphed.refresh_lr() == 0
    schedule.decay.step()
    assert graphed.refresh_lr() == 1 and tensor.item() == pytest.approx(0.025)
    with graphed.lr_as_tensors():
        assert opt.param_groups[0]["lr"] is tensor  # the same tensor the capture recorded


def test_graph_refused_on_cpu(tmp_path: Path) -> None:
    assert_one_line_error(run_cli([*TINY, "--graph", "--output-dir", str(tmp_path / "o")]),
                          "--graph", "--device cuda or npu")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("extra, needle", [
    (["--nproc", "2"], "--graph with several processes"),
    (["--compile"], "--graph and --compile"),
])
def test_graph_combinations_refused(tmp_path: Path, extra: list[str], needle: str) -> None:
    assert_one_line_error(run_cli([*TINY, "--graph", *extra, "--output-dir",
                                   str(tmp_path / "o")]), needle)


def test_graph_and_compile_refused_on_standin_npu(tmp_path: Path,
                                                  standin_env: dict[str, str]) -> None:
    assert_one_line_error(run_cli([*TINY, "--device", "npu", "--graph", "--output-dir",
                                   str(tmp_path / "o")], env=standin_env), "no graph capture")
    assert_one_line_error(run_cli([*TINY, "--device", "npu", "--compile", "--output-dir",
                                   str(tmp_path / "o2")], env=standin_env),
                          "--compile on npu needs torchair")


def test_engine_with_graphed_step_runs_the_trainer_handlers() -> None:
    """A GraphedStep inside the trainer Engine: LossTracker reads its output like the eager
    step's, the schedule moves its lr."""
    model, opt = _parts()
    from ignite_rn50.engine import TrainStep

    step = TrainStep(model, GraphedStep(Update(model, opt, nn.CrossEntropyLoss(), CPU, FP32,
                                                None), opt, api=None), CPU,
                     torch.contiguous_format, zero_grad=None)
    engine = Engine(step)
    schedule = handlers.LrSchedule(opt, [1, 2], 0.5, 0, 0.1)
    schedule.attach(engine)
    printed: list[float] = []
    handlers.LossTracker(CPU, 2, lambda e, v: printed.append(v)).attach(engine)
    engine.run(_batches(4), max_epochs=2)
    assert len(printed) == 4 and all(v > 0 for v in printed)
    assert schedule.lr == pytest.approx(0.025)
