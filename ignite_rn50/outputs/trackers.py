"""Experiment tracking on rank 0: ignite's TensorBoard and ClearML loggers, the pictures and
models they show, and the progress bar.

``TRACKERS`` is the one list (``--loggers`` takes its names): each entry starts a tracker
from a ``TrackerContext`` and returns an object with ignite's ``logger`` and ``close``, and
where it shows them the ``report_*`` methods (images, a confusion matrix, per-class top-1)
and ``publish_model``.
This module imports ignite and clearml only inside its functions: ``config.py`` reads the
names at ``--help`` time, before torch loads.

ClearML: one task per run, opened by the process that owns the run before anything is built
(``clearml_task.py``); rank 0 reports into it. ``auto`` goes online when a server is
configured, otherwise offline; an online server that cannot be reached, or that refuses the
credentials, turns into an offline session with one warning line, so a run never fails
because of reporting.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import numpy as np
    from ignite.engine import Engine

log = logging.getLogger("ignite_rn50")

ITER_METRICS = ["loss", "lr"]
EPOCH_METRICS = ["epoch_loss", "fps", "data_wait", "epoch_lr"]
VAL_METRICS = ["top1", "top5", "loss"]


@dataclass(frozen=True)
class TrackerContext:
    """What a tracker needs to know of the run."""

    out: Path
    environment: dict[str, str]
    clearml: dict[str, Any] = field(default_factory=dict)  # mode, project, task, tags, output_uri
    gpu_monitor: bool = False  # the device is an NVIDIA GPU (ClearML's GPU probe works)


class TensorBoardTracker:
    def __init__(self, ctx: TrackerContext) -> None:
        from ignite.handlers.tensorboard_logger import TensorboardLogger

        self.logger = TensorboardLogger(log_dir=str(ctx.out / "tensorboard"))

    def report_image(self, title: str, series: str, image: np.ndarray, step: int) -> None:
        self.logger.writer.add_image(f"{title}/{series}", image, step, dataformats="HWC")

    def report_confusion(self, matrix: np.ndarray, names: list[str], step: int) -> None:
        from ignite_rn50.outputs.samples import confusion_image

        self.report_image("val", "confusion_matrix", confusion_image(
            matrix, names, f"confusion matrix, epoch {step}"), step)

    def report_per_class(self, top1: list[float], names: list[str], step: int) -> None:
        pass  # a bar per class is ClearML's Plots tab; the confusion image holds it here


    def publish_model(self, name: str, weights: Path) -> None:
        pass  # the checkpoints beside the events are the models

    def close(self, out: Path) -> None:
        self.logger.close()


class ClearMLTracker:
    """ignite's ClearMLLogger on the run's task (the one the owner of the run opened, see
    clearml_task.py), the task's output models and the dashboard's pictures."""

    def __init__(self, ctx: TrackerContext) -> None:
        from ignite.handlers.clearml_logger import ClearMLLogger

        from ignite_rn50.outputs import clearml_task

        self.task = clearml_task.attach_task(task_options(ctx))
        clearml_task.record_environment(self.task, ctx.environment)
        self.logger = ClearMLLogger()  # picks up Task.current_task(): the task above
        self.models = clearml_task.ModelPublisher(self.task)

    def report_image(self, title: str, series: str, image: np.ndarray, step: int) -> None:
        self.task.get_logger().report_image(title, series, iteration=step, image=image)

    def report_confusion(self, matrix: np.ndarray, names: list[str], step: int) -> None:
        self.task.get_logger().report_confusion_matrix(
            "confusion matrix", "val", iteration=step, matrix=matrix, xaxis="predicted class",
            yaxis="true class", xlabels=list(names), ylabels=list(names))

    def report_per_class(self, top1: list[float], names: list[str], step: int) -> None:
        self.task.get_logger().report_histogram(
            "per-class top-1", "val", iteration=step, values=list(top1), xlabels=list(names),
            xaxis="class", yaxis="top-1")

    def publish_model(self, name: str, weights: Path) -> None:
        self.models.publish(name, weights)

    def close(self, out: Path) -> None:
        """Artifacts, then everything flushed; the task itself is closed by the owner of the
        run once every rank has ended (``clearml_task.finish_task``)."""
        for name in ("summary.json", "curves.png"):
            if (out / name).is_file():
                self.task.upload_artifact(name=name, artifact_object=str(out / name),
                                          wait_on_upload=True)
        self.task.flush(wait_for_uploads=True)  # not ClearMLLogger.close(): it closes the task


def task_options(ctx: TrackerContext) -> Any:
    from ignite_rn50.outputs.clearml_task import TaskOptions

    opts = ctx.clearml
    return TaskOptions(mode=opts["mode"], project=opts["project"],
                       name=opts["task"] or ctx.out.name, tags=tuple(opts["tags"]),
                       output_uri=opts.get("output_uri"), gpu_monitor=ctx.gpu_monitor)


@dataclass(frozen=True)
class TrackerSpec:
    start: Callable[[TrackerContext], Any]
    wanted: Callable[[dict[str, Any]], bool] = lambda clearml: True  # noqa: E731


TRACKERS: dict[str, TrackerSpec] = {
    "tensorboard": TrackerSpec(TensorBoardTracker),
    "clearml": TrackerSpec(ClearMLTracker, wanted=lambda clearml: clearml["mode"] != "off"),
}


class Tracking:
    """The trackers of one run: what rank 0 reports goes to each tracker that shows it (the
    ``report_*`` and ``publish_model`` methods are optional: a tracker of scalars only has
    none); ``close`` finishes them (the ClearML task uploads summary.json and curves.png)."""

    def __init__(self, trackers: list[Any] | None = None) -> None:
        self.trackers = trackers or []

    def _each(self, method: str, *args: Any) -> None:
        for tracker in self.trackers:
            if hasattr(tracker, method):
                getattr(tracker, method)(*args)

    def report_image(self, title: str, series: str, image: np.ndarray, step: int) -> None:
        self._each("report_image", title, series, image, step)

    def report_confusion(self, matrix: np.ndarray, names: list[str], step: int) -> None:
        self._each("report_confusion", matrix, names, step)

    def report_per_class(self, top1: list[float], names: list[str], step: int) -> None:
        self._each("report_per_class", top1, names, step)

    def publish_model(self, name: str, weights: Path) -> None:
        self._each("publish_model", name, weights)

    def close(self, out: Path) -> None:
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.close(out)


def start(names: list[str], ctx: TrackerContext, trainer: Engine, evaluator: Engine,
          ema_evaluator: Engine | None = None, iter_metrics: list[str] | None = None
          ) -> Tracking:
    """Start the named trackers (rank 0 calls this) and attach their output handlers to the
    run's events: the logged iterations, the evaluated epochs, and the evaluator's result
    (and the EMA's, ``val_ema``, with --ema-momentum)."""
    from ignite.engine import Events

    from ignite_rn50.events import RunEvents

    tracking = Tracking([TRACKERS[name].start(ctx) for name in names
                         if TRACKERS[name].wanted(ctx.clearml)])
    epoch = lambda *_: trainer.state.epoch  # noqa: E731
    for tracker in tracking.trackers:
        logger = tracker.logger
        logger.attach_output_handler(trainer, RunEvents.ITERATION_LOGGED, tag="train",
                                     metric_names=iter_metrics or ITER_METRICS,
                                     global_step_transform=lambda *_: trainer.state.iteration)
        logger.attach_output_handler(trainer, RunEvents.EPOCH_EVALUATED, tag="epoch",
                                     metric_names=EPOCH_METRICS, global_step_transform=epoch)
        # the evaluator's metrics complete before any handler attached after its creation
        logger.attach_output_handler(evaluator, Events.COMPLETED, tag="val",
                                     metric_names=VAL_METRICS, global_step_transform=epoch)
        if ema_evaluator is not None:
            logger.attach_output_handler(ema_evaluator, Events.COMPLETED, tag="val_ema",
                                         metric_names=VAL_METRICS, global_step_transform=epoch)
    return tracking


def attach_progress_bar(mode: str, rank: int, trainer: Engine) -> None:
    """ignite's tqdm bar, without a per-step loss readout (that would sync every step)."""
    if rank != 0 or mode == "off" or (mode == "auto" and not sys.stderr.isatty()):
        return
    from ignite.handlers import ProgressBar

    ProgressBar(persist=False).attach(trainer)
