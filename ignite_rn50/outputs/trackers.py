"""Experiment tracking on rank 0: ignite's TensorBoard and ClearML loggers, and the progress bar.

``TRACKERS`` is the one list (``--loggers`` takes its names): each entry starts a tracker
from a ``TrackerContext`` and returns an object with ignite's ``logger`` and a ``close``.
This module imports ignite and clearml only inside its functions: ``config.py`` reads the
names at ``--help`` time, before torch loads.

ClearML: one task per run, created here on rank 0 only (ignite's ClearMLLogger then picks it
up as ``Task.current_task()``). ``auto`` goes online when a server is configured, otherwise
offline; an online server that cannot be reached, or that refuses the credentials, turns
into an offline session with one warning line, so a run never fails because of reporting.
"""

from __future__ import annotations

import logging
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
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
    config_groups: dict[str, dict[str, Any]]  # hyperparameters by section
    config_text: str  # the resolved config as YAML
    clearml: dict[str, Any] = field(default_factory=dict)  # mode, project, task, tags
    gpu_monitor: bool = False  # the device is an NVIDIA GPU (ClearML's GPU probe works)


# --- ClearML internals (clearml 2.1) ------------------------------------------------------------
# clearml offers no public switch for these three; each private name is used in exactly one
# function below, and tests/outputs/test_trackers.py::test_clearml_internals_we_use_exist fails
# loudly when a clearml release renames or removes one.

def use_report_threads() -> None:
    """ClearML's reporter os.fork()s a monitor subprocess at Task.init; forking a rank that
    already runs torch/gloo threads deadlocks the copy (seen with --nproc 2). Threads only:
    the config key sdk.development.report_use_subprocess, read into this class attribute."""
    from clearml import Task

    Task._report_subprocess_enabled = False


def machine_monitor_class() -> type:
    """ClearML's resource monitor without its NVIDIA GPU probe, which without NVML warns
    'Could not fetch GPU stats' and later 'GPU monitoring failed' (machine stats stay).
    Its probe is the ``gpustat`` module it keeps in ``_gpustat``; None turns it off."""
    from clearml.utilities.resource_monitor import ResourceMonitor

    class MachineMonitor(ResourceMonitor):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._gpustat = None

    return MachineMonitor


def register_offline_model(model: Any, weights: Path) -> None:
    """clearml 2.1.x's OutputModel.update_weights (and Task.update_output_model) raise
    AttributeError offline (they ask a DummyModel whether the model is locked); its offline
    branch is the same registration without that check."""
    model._update_weights_offline(weights_filename=str(weights))


def clearml_configured() -> bool:
    """A server is configured: credentials/host in the environment, or a clearml.conf."""
    if os.environ.get("CLEARML_API_ACCESS_KEY") or os.environ.get("CLEARML_API_HOST"):
        return True
    conf = os.environ.get("CLEARML_CONFIG_FILE") or str(Path.home() / "clearml.conf")
    return Path(conf).is_file()


def clearml_api_host() -> str:
    host = os.environ.get("CLEARML_API_HOST")
    if host:
        return host
    from clearml.backend_api import Session

    return Session.get_api_server_host()


def probe_clearml_server(timeout: float = 5.0) -> str | None:
    """None when the API server answers at all (any HTTP status), else the reason it did not.

    Task.init itself retries an unreachable server for minutes; this answers in seconds."""
    host = clearml_api_host().rstrip("/")
    try:
        urllib.request.urlopen(f"{host}/debug.ping", timeout=timeout)  # noqa: S310
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"{host} unreachable ({getattr(exc, 'reason', exc)})"
    return None


class TensorBoardTracker:
    def __init__(self, ctx: TrackerContext) -> None:
        from ignite.handlers.tensorboard_logger import TensorboardLogger

        self.logger = TensorboardLogger(log_dir=str(ctx.out / "tensorboard"))

    def close(self, out: Path, best_checkpoint: Path | None) -> None:
        self.logger.close()


class ClearMLTracker:
    """A ClearML task (online, or an offline session) and ignite's ClearMLLogger on it."""

    def __init__(self, ctx: TrackerContext) -> None:
        from ignite.handlers.clearml_logger import ClearMLLogger

        self.task, self.offline = _start_clearml(ctx)
        self.logger = ClearMLLogger()

    def close(self, out: Path, best_checkpoint: Path | None) -> None:
        from clearml import OutputModel

        task = self.task
        if best_checkpoint is not None and best_checkpoint.is_file():
            model = OutputModel(task=task, name="best", framework="PyTorch")
            if task.is_offline():
                register_offline_model(model, best_checkpoint)
            else:
                model.update_weights(weights_filename=str(best_checkpoint),
                                     auto_delete_file=False)
        for name in ("summary.json", "curves.png"):
            if (out / name).is_file():
                task.upload_artifact(name=name, artifact_object=str(out / name),
                                     wait_on_upload=True)
        folder = task.get_offline_mode_folder() if self.offline else None
        task.close()
        self.logger.close()
        if folder is not None:
            log.info("ClearML offline session: %s.zip; import it into a server with "
                     "python -c \"from clearml import Task; Task.import_offline_session("
                     "'%s.zip')\"", folder, folder)


def _clearml_mode(requested: str) -> str:
    mode = requested
    if mode == "auto":
        mode = "online" if clearml_configured() else "offline"
    if mode == "online":
        problem = probe_clearml_server()
        if problem:
            log.warning("warning: ClearML server %s; reporting to an offline session instead",
                        problem)
            mode = "offline"
    return mode


def _start_clearml(ctx: TrackerContext) -> tuple[Any, bool]:
    """(task, offline)."""
    from clearml import Task

    opts = ctx.clearml
    offline = _clearml_mode(opts["mode"]) == "offline"
    Task.set_offline(offline)
    use_report_threads()
    kwargs = dict(project_name=opts["project"], task_name=opts["task"] or ctx.out.name,
                  tags=list(opts["tags"]) or None, reuse_last_task_id=False,
                  auto_connect_frameworks={"pytorch": False, "tensorboard": False,
                                           "matplotlib": False},
                  auto_connect_arg_parser=False,
                  auto_resource_monitoring=True if ctx.gpu_monitor else machine_monitor_class())
    try:
        task = Task.init(**kwargs)
    except Exception as exc:  # noqa: BLE001 - any online failure: keep training, go offline
        if offline:
            raise
        log.warning("warning: ClearML server refused the task (%s); reporting to an offline "
                    "session instead", type(exc).__name__)
        offline = True
        Task.set_offline(True)
        task = Task.init(**kwargs)
    for section, values in ctx.config_groups.items():
        task.connect(values, name=section)
    task.connect(dict(ctx.environment), name="environment")
    task.get_logger().report_text("\n".join(f"{k}: {v}" for k, v in ctx.environment.items()),
                                  print_console=False)
    task.set_configuration_object(name="resolved config", config_text=ctx.config_text,
                                  config_type="yaml")
    return task, offline


@dataclass(frozen=True)
class TrackerSpec:
    start: Callable[[TrackerContext], Any]
    wanted: Callable[[dict[str, Any]], bool] = lambda clearml: True  # noqa: E731


TRACKERS: dict[str, TrackerSpec] = {
    "tensorboard": TrackerSpec(TensorBoardTracker),
    "clearml": TrackerSpec(ClearMLTracker, wanted=lambda clearml: clearml["mode"] != "off"),
}


class Tracking:
    """The trackers of one run; ``close`` finishes them (the ClearML task uploads the best
    checkpoint, summary.json and curves.png first)."""

    def __init__(self, trackers: list[Any] | None = None) -> None:
        self.trackers = trackers or []

    def close(self, out: Path, best_checkpoint: Path | None) -> None:
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.close(out, best_checkpoint)


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
