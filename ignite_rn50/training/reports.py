"""What rank 0 shows on the dashboards besides the scalars (``outputs/trackers.py`` draws and
sends it): the last and best checkpoints as the task's models at every save, each
evaluation's confusion matrix and per-class top-1, a grid of test images with their true
and predicted classes each epoch (as ignite's imagenet reference logs predictions), and,
when the recipe mixes, one grid of the mixed training images the first step trained on."""

from __future__ import annotations

from pathlib import Path

import torch
from ignite.engine import Engine, Events

from ignite_rn50.events import RunEvents
from ignite_rn50.outputs import perclass, samples
from ignite_rn50.outputs.trackers import Tracking
from ignite_rn50.training.checkpoints import Checkpoints
from ignite_rn50.training.context import RunContext
from ignite_rn50.training.step import EvalStep, Inputs, prepare_batch


def class_names(ctx: RunContext) -> list[str]:
    """The dataset's class names where it has them, else the class indices."""
    return perclass.names_for(ctx.data.class_names, ctx.data.num_classes)


class PerClassResults:
    """Each evaluation's confusion matrix (ignite's ConfusionMatrix, all-reduced over the
    ranks: ``evaluator.state.metrics["confusion"]``) and per-class top-1 (perclass.py)."""

    def __init__(self, ctx: RunContext, tracking: Tracking) -> None:
        self.evaluator, self.tracking, self.names = ctx.evaluator, tracking, class_names(ctx)

    def __call__(self, engine: Engine) -> None:
        matrix = self.evaluator.state.metrics["confusion"].cpu().numpy()
        top1 = [row["top1"] or 0.0 for row in perclass.per_class(matrix.tolist(), self.names)]
        self.tracking.report_confusion(matrix, self.names, engine.state.epoch)
        self.tracking.report_per_class(top1, self.names, engine.state.epoch)


class ModelsAtEverySave:
    """After each epoch's checkpoints exist: the newest as the model 'last', and the best
    one as 'best' when it changed."""

    def __init__(self, saves: Checkpoints, tracking: Tracking) -> None:
        self.saves, self.tracking = saves, tracking
        self.best: Path | None = None

    def __call__(self, engine: Engine) -> None:
        last = self.saves.last_path
        if last is not None and last.is_file():
            self.tracking.publish_model("last", last)
        best = self.saves.best_path
        if best is not None and best != self.best and best.is_file():
            self.tracking.publish_model("best", best)
            self.best = best


class PredictionGrid:
    """A fixed handful of rank 0's test images, scored by the model after each epoch."""

    def __init__(self, ctx: RunContext, tracking: Tracking) -> None:
        self.tracking, self.names = tracking, class_names(ctx)
        parts, device = ctx.parts, ctx.rt.device
        self.score = EvalStep(parts.model, device, parts.precision, parts.memory_format)
        first = next(iter(ctx.data.eval_batches), None)
        self.batch = None if first is None else tuple(t[:samples.GRID_IMAGES] for t in first)
        self.device, self.memory_format = device, parts.memory_format

    @torch.no_grad()
    def __call__(self, engine: Engine) -> None:
        if self.batch is None:
            return
        images, _ = prepare_batch(self.batch, self.device, self.memory_format)
        logits, labels = self.score(engine, self.batch)
        captions = samples.prediction_captions(labels.tolist(), logits.argmax(1).tolist(),
                                               self.names)
        epoch = engine.state.epoch
        self.tracking.report_image("predictions", "test images", samples.caption_grid(
            images, captions, f"test images after epoch {epoch}: true and predicted class"),
            epoch)


class MixedGrid:
    """The first step's mixed batch, as the step made it (the same ``Inputs``, whose draws
    depend only on the seed, rank, epoch and batch index)."""

    def __init__(self, ctx: RunContext, tracking: Tracking) -> None:
        parts = ctx.parts
        self.inputs = Inputs(ctx.rt.device, parts.memory_format, parts.mix)
        self.tracking, self.names = tracking, class_names(ctx)
        self.spec = parts.mix.spec.describe() if parts.mix is not None else ""
        self.done = False

    @torch.no_grad()
    def __call__(self, engine: Engine) -> None:
        if self.done:
            return
        self.done = True
        images, targets = self.inputs(engine, engine.state.batch)
        self.tracking.report_image("mixed training batch", "train", samples.caption_grid(
            images, samples.mixed_captions(targets, self.names),
            f"mixed training images ({self.spec}), iteration {engine.state.iteration}: "
            "their two strongest targets"), engine.state.iteration)


def attach(ctx: RunContext, saves: Checkpoints, tracking: Tracking) -> None:
    """Rank 0, with its trackers started."""
    if not tracking.trackers:
        return
    ctx.trainer.add_event_handler(RunEvents.EPOCH_SAVED, ModelsAtEverySave(saves, tracking))
    ctx.trainer.add_event_handler(RunEvents.EPOCH_EVALUATED, PredictionGrid(ctx, tracking))
    ctx.trainer.add_event_handler(RunEvents.EPOCH_EVALUATED, PerClassResults(ctx, tracking))
    if ctx.parts.mix is not None:
        # before the step: its cutmix pastes into the batch in place (no copy when the batch
        # is already on the device), so after it the batch would be mixed twice here
        ctx.trainer.add_event_handler(Events.ITERATION_STARTED, MixedGrid(ctx, tracking))
