"""The ClearML task of a run, from its creation to its close.

The process that owns the run (the one process, the launcher of node 0, global rank 0 under
torchrun/SLURM) opens the task and connects the configuration before anything is built
(``open_task``, ``connect_config``), so that under a ``clearml-agent`` the values edited on
the dashboard are the ones that train. Rank 0 then reports into that same task: ClearML
shares it with the processes we spawn through the ``CLEARML_PROC_MASTER_ID`` variable they
inherit (``attach_task``); in the owner's own process it is simply the current task. The
owner closes it when every rank has ended (``finish_task``).

clearml and its internals are imported inside the functions (``--help`` reads this room's
registries before torch loads); each private name is used in one function and checked by
``tests/outputs/test_trackers.py::test_clearml_internals_we_use_exist``.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ignite_rn50.errors import UserError

log = logging.getLogger("ignite_rn50")
READ_ONLY = "read-only: what this run ran on, recorded by the run; editing it changes nothing"


@dataclass(frozen=True)
class TaskOptions:
    """What ``Task.init`` is given: the run's --clearml-* options and the device's probe."""

    mode: str  # auto, online, offline
    project: str
    name: str
    tags: tuple[str, ...] = ()
    output_uri: str | bool | None = None  # None: clearml.conf's default; True: the file server
    gpu_monitor: bool = False  # an NVIDIA GPU: ClearML's GPU probe works


# --- ClearML internals (clearml 2.1) ------------------------------------------------------------

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


def register_offline_model(task: Any, name: str, weights: Path) -> None:
    """clearml 2.1.x's OutputModel.update_weights raises AttributeError offline (it asks a
    DummyModel whether the model is locked); its offline branch is the same registration
    without that check. It copies the file into the session and appends to the task's list
    of offline models, but writes task.json only at the task's next edit: here the earlier
    entry of the same name leaves the list, task.json is written at once (``_edit``), and
    only then is the earlier copy deleted, so at any moment task.json names files that
    exist and a killed run leaves the models of its last save."""
    from clearml import OutputModel

    earlier = [entry for entry in task._offline_output_models if entry["init"]["name"] == name]
    model = OutputModel(task=task, name=name, framework="PyTorch")
    model._update_weights_offline(weights_filename=str(weights))
    task._offline_output_models = [entry for entry in task._offline_output_models
                                   if entry not in earlier]
    task._edit()  # offline: writes task.json, models included (no server call)
    for entry in earlier:
        old = entry["weights"].get("weights_filename")
        if old and Path(old).name != weights.name:
            Path(old).unlink(missing_ok=True)


def adopt_offline_record(task: Any) -> None:
    """The owner's Task object before it closes an offline session that a spawned rank 0
    reported into: closing writes task.json from the object's own memory, which lacks what
    the rank added (the environment parameters, the output models). ``reload`` reads the
    parameters back from the session's task.json; the models list is a separate attribute."""
    path = task.get_offline_mode_folder() / "task.json"
    if not path.is_file():
        return
    task.reload()
    task._offline_output_models = json.loads(path.read_text()).get("offline_output_models", [])


# --- where the task lives ---------------------------------------------------------------------

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


def clearml_mode(requested: str) -> str:
    """online or offline: ``auto`` is online where a server is configured; an online server
    that does not answer turns into an offline session with one warning line."""
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


def server_problem(requested: str) -> str | None:
    """Why no ClearML server can take a task (for --clearml-queue), or None."""
    if requested in ("offline", "off"):
        return f"--clearml-mode is {requested}"
    if not clearml_configured():
        return ("no ClearML server is configured (run clearml-init, or set CLEARML_API_HOST, "
                "CLEARML_API_ACCESS_KEY and CLEARML_API_SECRET_KEY)")
    return probe_clearml_server()


def running_remotely() -> bool:
    """A clearml-agent runs this process: the task's stored parameters rule."""
    from clearml.config import running_remotely as remote

    return remote()


# --- the task's life ----------------------------------------------------------------------------

def _init_kwargs(opts: TaskOptions) -> dict[str, Any]:
    return dict(project_name=opts.project, task_name=opts.name, tags=list(opts.tags) or None,
                reuse_last_task_id=False, output_uri=opts.output_uri,
                auto_connect_frameworks={"pytorch": False, "tensorboard": False,
                                         "matplotlib": False},
                auto_connect_arg_parser=False,
                auto_resource_monitoring=True if opts.gpu_monitor else machine_monitor_class())


def open_task(opts: TaskOptions) -> tuple[Any, bool]:
    """(task, offline): the run's task, created (or, under an agent, the agent's task)."""
    from clearml import Task

    offline = clearml_mode(opts.mode) == "offline"
    Task.set_offline(offline)
    use_report_threads()
    kwargs = _init_kwargs(opts)
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
    if not task.is_offline() and not task.output_uri:
        log.warning("warning: the ClearML task has no output URI: its models are registered "
                    "as paths on this machine; --clearml-output-uri true uploads them to the "
                    "ClearML file server")
    return task, offline or task.is_offline()


def connect_config(task: Any, groups: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Connect each section of the configuration. Locally the task records our values and
    None comes back. Under an agent ClearML's ``connect`` returns the stored (edited) values,
    cast to our values' types; where a stored string does not cast ('abc' for a float, '7.5'
    for an int) it silently keeps ours, so the stored strings themselves come back,
    ``{"training/lr": "0.02", ...}``, to be checked like flags (``config.parsing``)."""
    returned = {section: task.connect(dict(values), name=section)
                for section, values in groups.items()}
    if not running_remotely():
        return None
    stored = task.get_parameters(cast=False)
    return {f"{section}/{key}": stored.get(f"{section}/{key}", value)
            for section, values in returned.items() for key, value in values.items()}


def describe_config(task: Any, config_text: str) -> None:
    task.set_configuration_object(name="resolved config", config_text=config_text,
                                  config_type="yaml")


def enqueue(task: Any, queue: str) -> None:
    """Hand the task to ``queue``'s agents and end this process (ClearML exits it with 0);
    under an agent this is a no-op and the run goes on here."""
    log.info("enqueued ClearML task %s in queue '%s'; a clearml-agent of that queue runs it",
             task.id, queue)
    task.execute_remotely(queue_name=queue, clone=False, exit_process=True)


def check_queue(requested_mode: str, queue: str) -> None:
    problem = server_problem(requested_mode)
    if problem:
        raise UserError(f"--clearml-queue {queue} needs a ClearML server to enqueue the task "
                        f"in, but {problem}; configure a server or drop --clearml-queue")


def attach_task(opts: TaskOptions) -> Any:
    """Rank 0's handle on the owner's task: the current task in the owner's own process; in a
    spawned rank, ClearML finds the owner's task id in the environment it inherited
    (``CLEARML_PROC_MASTER_ID``) and returns that task. Where no owner opened one (a rank
    started otherwise), a task of its own."""
    from clearml import Task

    use_report_threads()
    if _spawned_from_owner():
        kwargs = _init_kwargs(opts)
        kwargs.update(project_name=None, task_name=None, auto_resource_monitoring=False)
        return Task.init(**kwargs)
    return Task.current_task() or open_task(opts)[0]


def _spawned_from_owner() -> bool:
    from clearml.config.defs import PROC_MASTER_ID_ENV_VAR

    pid, _, task_id = (PROC_MASTER_ID_ENV_VAR.get() or "").partition(":")
    return bool(task_id) and pid != str(os.getpid())


def record_environment(task: Any, environment: dict[str, str]) -> None:
    """The environment section, described as read-only on the dashboard."""
    for key, value in environment.items():
        task.set_parameter(f"environment/{key}", str(value), description=READ_ONLY)
    task.get_logger().report_text("\n".join(f"{k}: {v}" for k, v in environment.items()),
                                  print_console=False)


class ModelPublisher:
    """The task's output models by name (last, best), each updated at every save: uploaded
    to the task's output URI online (in the background), copied into the session offline
    (one file per name)."""

    def __init__(self, task: Any) -> None:
        self.task = task
        self.models: dict[str, Any] = {}

    def publish(self, name: str, weights: Path) -> None:
        if self.task.is_offline():
            register_offline_model(self.task, name, weights)
            return
        from clearml import OutputModel

        if name not in self.models:
            self.models[name] = OutputModel(task=self.task, name=name, framework="PyTorch")
        self.models[name].update_weights(weights_filename=str(weights), auto_delete_file=False,
                                         async_enable=True)


def finish_task(task: Any, offline: bool) -> Path | None:
    """Close the task (the owner, once every rank has ended); the offline session's folder."""
    folder = task.get_offline_mode_folder() if offline else None
    if offline:
        adopt_offline_record(task)
    task.close()
    return folder
