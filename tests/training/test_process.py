"""The real wiring in-process (``training/process.py``: build_context and the factories
run_training calls): the order in which checkpoints, summary.json and the trackers are
registered decides nothing, and weights that became NaN in an epoch's last step are never
evaluated or saved."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import pytest
import torch
from ignite.engine import Events
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ignite_rn50.config.parsing import parse_config
from ignite_rn50.errors import Diverged
from ignite_rn50.system.signals import GracefulStop
from ignite_rn50.training import checkpoints, handlers, process, summary
from ignite_rn50.training.context import RunContext
from tests.helpers import TINY

TIMING = {"fps", "data_wait", "train_seconds", "eval_seconds", "e2e_seconds",
          "data_wait_share"}


def _context(out: Path, *extra: str) -> RunContext:
    flags = [*TINY, "--epochs", "2", "--keep-checkpoints", "5", "--output-dir", str(out), *extra]
    out.mkdir(parents=True)  # what runtime.preflight does before any rank starts
    return process.build_context(parse_config(flags), GracefulStop())


def _run(out: Path, order: list[str]) -> RunContext:
    """Attach the trainer's handlers and the three event users in ``order``, then train."""
    ctx = _context(out, "--loggers", "tensorboard")
    saves = checkpoints.setup_checkpoints(ctx)
    made: dict[str, object] = {}
    fps = handlers.FpsMeter(ctx.rt.device)
    attach: dict[str, Callable[[], object]] = {
        "handlers": lambda: handlers.attach_all(ctx, fps),
        "checkpoints": lambda: saves.attach(ctx.trainer, None),
        "summary": lambda: summary.RunSummary.attach(ctx, lambda: fps.fps,
                                                     lambda: saves.best_path),
        "trackers": lambda: process.start_trackers(ctx, saves),
    }
    for name in order:
        made[name] = attach[name]()
    outputs = process.Outputs(saves, made["summary"], made["trackers"])  # type: ignore
    try:
        process.run_until_done(ctx, outputs)
    finally:
        logging.getLogger("ignite_rn50").handlers.clear()
    return ctx


def _files(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
               for tag in acc.Tags()["scalars"] if tag.split("/")[1] not in TIMING}
    return {"checkpoints": {p.name: torch.load(p, weights_only=True)["model"]
                            for p in sorted(out.glob("*.pt"))},
            "summary": {k: v for k, v in summary.items() if k not in TIMING and k != "history"
                        and not str(v).startswith(str(out))},
            "history": [{k: v for k, v in row.items() if k not in TIMING}
                        for row in summary["history"]],
            "best": Path(summary["best_checkpoint"]).name, "scalars": scalars}


@pytest.mark.slow
def test_registration_order_changes_no_file(tmp_path: Path) -> None:
    first = _files(_run(tmp_path / "a", ["handlers", "checkpoints", "summary",
                                         "trackers"]).rt.out)
    second = _files(_run(tmp_path / "b", ["trackers", "summary", "checkpoints",
                                          "handlers"]).rt.out)
    assert first["checkpoints"].keys() == second["checkpoints"].keys()
    names = list(first["checkpoints"])
    assert names[1:] == ["checkpoint_1.pt", "checkpoint_2.pt"] and names[0].startswith("best_")
    for name, state in first["checkpoints"].items():
        for key, value in state.items():
            assert torch.equal(value, second["checkpoints"][name][key]), (name, key)
    assert first["summary"] == second["summary"] and first["history"] == second["history"]
    assert first["best"] == second["best"] and first["best"] in first["checkpoints"]
    assert first["scalars"] == second["scalars"]
    assert {"train/loss", "train/lr", "epoch/epoch_loss", "epoch/epoch_lr", "val/top1"} <= set(
        first["scalars"])
    # what each event user logged is the epoch's own: val top-1 per epoch = the history's
    assert [v for _, v in first["scalars"]["val/top1"]] == pytest.approx(
        [r["val_top1"] for r in first["history"]])


def test_nonfinite_weights_after_an_epochs_last_step_are_not_evaluated_or_saved(
        tmp_path: Path) -> None:
    """Every loss that is checked is finite, yet the last update of epoch 2 makes the weights
    NaN: EpochEnd stops before evaluation, so no checkpoint, history row or summary of it."""
    out = tmp_path / "nan"
    ctx = _context(out)
    saves = checkpoints.setup_checkpoints(ctx)

    @ctx.trainer.on(Events.ITERATION_COMPLETED(once=16))  # the last of epoch 2 (8 per epoch)
    def poison(_: object) -> None:
        with torch.no_grad():
            next(ctx.parts.model.parameters()).fill_(float("nan"))

    outputs = process.attach_outputs(ctx, saves)
    with pytest.raises(Diverged, match="weights became NaN/inf at epoch 2, iteration 8"):
        try:
            process.run_until_done(ctx, outputs)
        finally:
            logging.getLogger("ignite_rn50").handlers.clear()
    assert sorted(p.name for p in out.glob("checkpoint_*.pt")) == ["checkpoint_1.pt"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_completed"] == 1 and len(summary["history"]) == 1
