"""summary.json: what a run says of itself, for people and scripts (written by rank 0).

The log and the environment lines are in ``outputs/logs.py``, curves.png in
``outputs/plots.py``, experiment trackers (TensorBoard, ClearML) in ``outputs/trackers.py``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import ignite.distributed as idist

from ignite_rn50.events import RunEvents
from ignite_rn50.model.resnet import count_parameters
from ignite_rn50.outputs import rundir
from ignite_rn50.training.context import RunContext, RunRecord
from ignite_rn50.training.step import StepFacts


def summary_facts(ctx: RunContext) -> dict[str, Any]:
    """What summary.json says of the run itself (measurements are added as it goes)."""
    cfg, rt, parts = ctx.cfg, ctx.rt, ctx.parts
    return {"world_size": rt.processes, "global_batch_size": ctx.global_batch,
            "device": str(rt.device), "device_type": rt.device.type,
            "amp": parts.precision.describe(), "precision": parts.precision.explain(),
            "optimizer": type(parts.optimizer).__name__, "depth": cfg.depth,
            "dataset": cfg.dataset, "parameters": count_parameters(parts.model),
            "epochs": cfg.epochs, "lr": cfg.lr, "lr_policy": cfg.lr_policy,
            "input_pipeline": ctx.data.kind, "graph": cfg.graph,
            "gflops_per_image": ctx.flops_per_image / 1e9,
            "gmacs_per_image": ctx.flops_per_image / 2e9, "image_size": ctx.data.image_size,
            "accum_steps": cfg.accum_steps, "clip_grad_norm": cfg.clip_grad_norm,
            "ema_momentum": cfg.ema_momentum, "sync_bn": cfg.sync_bn,
            "deterministic": cfg.deterministic,
            "best_checkpoint_by": "val_ema_top1" if parts.ema is not None else "val_top1"}


@dataclass
class RunSummary:
    """summary.json: the run's fixed facts plus what it has measured so far; rewritten
    atomically by rank 0 after every epoch's checkpoints (``EPOCH_SAVED``) and at the end."""

    path: Path
    facts: dict[str, Any]
    record: RunRecord
    fps: Callable[[], float | None]
    best_checkpoint: Callable[[], Path | None]
    started: float  # time.perf_counter() at the start of this process
    step_facts: StepFacts

    @classmethod
    def attach(cls, ctx: RunContext, fps: Callable[[], float | None],
               best_checkpoint: Callable[[], Path | None]) -> RunSummary:
        summary = cls(ctx.rt.out / "summary.json", summary_facts(ctx), ctx.record, fps,
                      best_checkpoint, ctx.rt.started, ctx.step_facts)
        ctx.trainer.add_event_handler(RunEvents.EPOCH_SAVED, summary.write)
        return summary

    def write(self, engine: Any) -> None:
        if idist.get_rank() != 0:
            return
        history = self.record.history
        last = history[-1] if history else {}
        state = engine.state
        best = self.best_checkpoint()
        rundir.write_json_atomic(self.path, {
            **self.facts,
            "fps": self.fps(), "data_wait_share": last.get("data_wait"),
            "best_top1": self.record.best_top1, "final_top1": last.get("val_top1"),
            "final_top5": last.get("val_top5"), "final_loss": last.get("train_loss"),
            "final_val_loss": last.get("val_loss"),
            "epochs_completed": last.get("epoch", 0), "iterations": state.iteration,
            "step_dtype": str(self.step_facts.dtype),
            "step_device": str(self.step_facts.device),
            "step_channels_last": self.step_facts.channels_last,
            "best_checkpoint": str(best) if best else None,
            "best_per_class": self.record.best_per_class,
            **ema_results(history),
            "e2e_seconds": time.perf_counter() - self.started,
            "history": history})


def ema_results(history: list[dict[str, Any]]) -> dict[str, Any]:
    """--ema-momentum: the average's best and final scores beside the model's."""
    ema = [row for row in history if "val_ema_top1" in row]
    if not ema:
        return {}
    return {"best_ema_top1": max(row["val_ema_top1"] for row in ema),
            "final_ema_top1": ema[-1]["val_ema_top1"], "final_ema_top5": ema[-1]["val_ema_top5"],
            "final_ema_val_loss": ema[-1]["val_ema_loss"]}
