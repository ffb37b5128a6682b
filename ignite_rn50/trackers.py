"""Experiment tracking on rank 0: ignite's TensorBoard and ClearML loggers, and the progress bar.

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
from pathlib import Path
from typing import Any

import yaml
from ignite.engine import Engine, Events
from ignite.handlers import global_step_from_engine

from ignite_rn50 import device as dev
from ignite_rn50.config import Config
from ignite_rn50.runtime import Runtime

log = logging.getLogger("ignite_rn50")

ITER_METRICS = ["loss", "lr"]
EPOCH_METRICS = ["epoch_loss", "fps", "data_wait", "epoch_lr"]
VAL_METRICS = ["top1", "top5", "loss"]


# --- ClearML internals (clearml 2.1) ------------------------------------------------------------
# clearml offers no public switch for these three; each private name is used in exactly one
# function below, and tests/test_reporting.py::test_clearml_internals_we_use_exist fails
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


class Tracking:
    """The loggers of one run and the ClearML task, if any; ``close`` finishes them."""

    def __init__(self) -> None:
        self.loggers: list[Any] = []
        self.task: Any = None
        self.offline = False

    def close(self, out: Path, best_checkpoint: Path | None) -> None:
        if self.task is not None:
            self._finish_task(out, best_checkpoint)
        for logger in self.loggers:
            logger.close()
        self.loggers.clear()

    def _finish_task(self, out: Path, best_checkpoint: Path | None) -> None:
        from clearml import OutputModel

        task, self.task = self.task, None
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
        if folder is not None:
            log.info("ClearML offline session: %s.zip; import it into a server with "
                     "python -c \"from clearml import Task; Task.import_offline_session("
                     "'%s.zip')\"", folder, folder)


def _start_clearml(cfg: Config, out: Path, tracking: Tracking, environment: dict[str, str],
                   gpu_monitor: bool) -> None:
    from clearml import Task

    mode = cfg.clearml_mode
    if mode == "auto":
        mode = "online" if clearml_configured() else "offline"
    if mode == "online":
        problem = probe_clearml_server()
        if problem:
            log.warning("warning: ClearML server %s; reporting to an offline session instead",
                        problem)
            mode = "offline"
    tracking.offline = mode == "offline"
    Task.set_offline(tracking.offline)
    use_report_threads()
    kwargs = dict(project_name=cfg.clearml_project, task_name=cfg.clearml_task or out.name,
                  tags=list(cfg.clearml_tags) or None, reuse_last_task_id=False,
                  auto_connect_frameworks={"pytorch": False, "tensorboard": False,
                                           "matplotlib": False},
                  auto_connect_arg_parser=False,
                  auto_resource_monitoring=True if gpu_monitor else machine_monitor_class())
    try:
        task = Task.init(**kwargs)
    except Exception as exc:  # noqa: BLE001 - any online failure: keep training, go offline
        if tracking.offline:
            raise
        log.warning("warning: ClearML server refused the task (%s); reporting to an offline "
                    "session instead", type(exc).__name__)
        tracking.offline = True
        Task.set_offline(True)
        task = Task.init(**kwargs)
    for section, values in cfg.groups().items():
        task.connect(values, name=section)
    task.connect(dict(environment), name="environment")
    task.get_logger().report_text("\n".join(f"{k}: {v}" for k, v in environment.items()),
                                  print_console=False)
    task.set_configuration_object(name="resolved config", config_text=yaml.safe_dump(
        cfg.as_dict(), sort_keys=False), config_type="yaml")
    tracking.task = task


def start(cfg: Config, rt: Runtime, trainer: Engine, evaluator: Engine) -> Tracking:
    tracking = Tracking()
    if not rt.is_main:
        return tracking
    out = rt.out
    if "tensorboard" in cfg.loggers:
        from ignite.handlers.tensorboard_logger import TensorboardLogger

        tracking.loggers.append(TensorboardLogger(log_dir=str(out / "tensorboard")))
    if "clearml" in cfg.loggers and cfg.clearml_mode != "off":
        from ignite.handlers.clearml_logger import ClearMLLogger

        _start_clearml(cfg, out, tracking, rt.environment, dev.gpu_monitor_works(rt.device))
        tracking.loggers.append(ClearMLLogger())
    epoch_step = global_step_from_engine(trainer, Events.EPOCH_COMPLETED)
    for logger in tracking.loggers:
        logger.attach_output_handler(trainer, Events.ITERATION_COMPLETED(every=cfg.print_freq),
                                     tag="train", metric_names=ITER_METRICS)
        logger.attach_output_handler(trainer, Events.EPOCH_COMPLETED, tag="epoch",
                                     metric_names=EPOCH_METRICS, global_step_transform=epoch_step)
        logger.attach_output_handler(evaluator, Events.COMPLETED, tag="val",
                                     metric_names=VAL_METRICS, global_step_transform=epoch_step)
    return tracking


def attach_progress_bar(mode: str, rank: int, trainer: Engine) -> None:
    """ignite's tqdm bar, without a per-step loss readout (that would sync every step)."""
    if rank != 0 or mode == "off" or (mode == "auto" and not sys.stderr.isatty()):
        return
    from ignite.handlers import ProgressBar

    ProgressBar(persist=False).attach(trainer)
