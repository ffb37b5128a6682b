"""The objects one training process is made of, in one place (as ignite's ``State`` is for
an Engine): the handlers, checkpoints and reports take a ``RunContext`` instead of a dozen
parameters. Built once by ``process.build_context``; nothing here does any work."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from ignite.engine import Engine

from ignite_rn50.config.declaration import Config
from ignite_rn50.model.flops import flops_per_image
from ignite_rn50.system.signals import GracefulStop
from ignite_rn50.training.assembly import Parts
from ignite_rn50.training.dataflow import Dataflow
from ignite_rn50.training.runtime import Runtime
from ignite_rn50.training.step import StepFacts


class RunRecord:
    """Per-epoch history; checkpointed with the run so curves cover a resumed run too."""

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []
        self.best_per_class: dict[str, Any] | None = None  # outputs/perclass.summary_entry

    def add(self, row: dict[str, Any], per_class: dict[str, Any] | None = None) -> None:
        """``per_class``: the epoch's per-class results, kept while it is the best epoch (the
        first of equals, as the best checkpoint is)."""
        earlier = [r for r in self.history if r["epoch"] < row["epoch"]]
        best = max((r["val_top1"] for r in earlier), default=None)
        if per_class is not None and (best is None or row["val_top1"] > best):
            self.best_per_class = per_class
        self.history = earlier + [row]

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(r) for r in self.history],
                "best_per_class": self.best_per_class}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [dict(r) for r in state["history"]]
        self.best_per_class = state.get("best_per_class")  # older checkpoints have none

    @property
    def best_top1(self) -> float | None:
        values = [r["val_top1"] for r in self.history]
        return max(values) if values else None


@dataclass
class RunContext:
    """A training process's objects (see the module's docstring)."""

    cfg: Config
    rt: Runtime
    data: Dataflow
    parts: Parts
    trainer: Engine
    evaluator: Engine
    stop: GracefulStop
    step_facts: StepFacts = field(default_factory=StepFacts)
    record: RunRecord = field(default_factory=RunRecord)
    ema_evaluator: Engine | None = None  # --ema-momentum: scores the average

    @functools.cached_property
    def flops_per_image(self) -> int:
        """FLOPs (2 per multiply-add) of one image's forward: the log's start, summary.json."""
        return flops_per_image(self.cfg.depth, self.data.num_classes, self.data.image_size)

    @property
    def epoch_length(self) -> int:
        return len(self.data.train)

    @property
    def global_batch(self) -> int:
        return self.data.batch_per_process * self.rt.processes
