"""The ClearML dashboard as the run's source of truth: connect first, then build.

The process that owns the run (the one process, the launcher of node 0, global rank 0 under
torchrun/SLURM) opens the task and connects the configuration before anything is checked,
built or resumed. Under a ``clearml-agent`` (a clone edited on the dashboard, or an HPO
trial) the task's stored values come back and go through the same schema as flags and YAML;
the Config that results is what every rank trains with: a ``--nproc`` job's ranks get it
with the spawn, as they get any Config. Rank 0 reports into the same task
(``outputs/clearml_task.py``), and the owner closes it when every rank has ended.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import ignite.distributed as idist
import yaml

from ignite_rn50.config.declaration import FIELDS, Config
from ignite_rn50.config.parsing import ATTRIBUTE_OF_KEY, config_from_dashboard, make_config
from ignite_rn50.outputs import clearml_task, logs
from ignite_rn50.system import device as dev
from ignite_rn50.training.runtime import owns_output_dir


def task_options(cfg: Config) -> clearml_task.TaskOptions:
    import torch

    uri = cfg.clearml_output_uri
    gpu = dev.gpu_monitor_works(torch.device(dev.resolve_device_type(cfg.device)))
    return clearml_task.TaskOptions(
        mode=cfg.clearml_mode, project=cfg.clearml_project,
        name=cfg.clearml_task or Path(cfg.output_dir).expanduser().resolve().name,
        tags=tuple(cfg.clearml_tags), gpu_monitor=gpu,
        output_uri=True if uri is not None and uri.lower() == "true" else uri)


def wanted(cfg: Config) -> bool:
    return "clearml" in cfg.loggers and cfg.clearml_mode != "off" and \
        owns_output_dir(cfg.node_rank)


def resolve(cfg: Config, task: Any) -> Config:
    """The Config to run: ``cfg``, or under an agent the task's stored values read through
    the schema (a bad one is one line naming it); the task records it. With --clearml-queue
    (not under an agent) this process ends here, the task in the queue."""
    stored = clearml_task.connect_config(task, cfg.groups())
    if stored is not None:
        before = cfg.as_dict()
        cfg = config_from_dashboard(cfg, stored)
        changed = [f"{k}={v!r}" for k, v in cfg.as_dict().items() if before[k] != v]
        logs.log.info("ClearML task %s: running with its stored parameters%s", task.id,
                      f" ({', '.join(changed)} differ from the command line)" if changed else "")
    clearml_task.describe_config(task, yaml.safe_dump(cfg.as_dict(), sort_keys=False))
    if cfg.clearml_queue and not clearml_task.running_remotely():
        clearml_task.enqueue(task, cfg.clearml_queue)
    return cfg


@contextlib.contextmanager
def connected(cfg: Config) -> Iterator[Config]:
    """The Config to run, with the run's task open around it when this process owns a run
    that reports to ClearML; a run that fails (a bad edited value included) marks its task
    failed. The task is closed once every rank has ended."""
    if not wanted(cfg):
        yield cfg
        return
    logs.setup_logging(0, None)  # the console, for what is said before the run's log exists
    if cfg.clearml_queue and not clearml_task.running_remotely():
        clearml_task.check_queue(cfg.clearml_mode, cfg.clearml_queue)
    task, offline = clearml_task.open_task(task_options(cfg))
    try:
        yield resolve(cfg, task)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            task.mark_failed(status_message=f"{type(exc).__name__}: {exc}"[:200], force=True)
        raise
    finally:
        folder = clearml_task.finish_task(task, offline)
        if folder is not None:
            print(f"ClearML offline session: {folder}.zip; import it into a server with "
                  f"python -c \"from clearml import Task; Task.import_offline_session("
                  f"'{folder}.zip')\"", flush=True)


NODE_LOCAL = {"node_rank", "gpu_id", "data", "download"}  # each node's own, never rank 0's


def rank0_config(cfg: Config) -> Config:
    """Every rank's Config as the run's owner resolved it. A --nproc job's ranks got it with
    the spawn; under torchrun/SLURM and on the other nodes of a job only global rank 0 read
    the dashboard, so each rank takes rank 0's values (one broadcast as the ranks start),
    except what is its node's own (``NODE_LOCAL``)."""
    if idist.get_world_size() == 1 or not ("clearml" in cfg.loggers
                                           and cfg.clearml_mode != "off"):
        return cfg
    theirs = yaml.safe_load(idist.broadcast(yaml.safe_dump(cfg.as_dict()), src=0))
    values = {name: getattr(cfg, name) for name in FIELDS}
    values.update({ATTRIBUTE_OF_KEY[key]: value for key, value in theirs.items()
                   if ATTRIBUTE_OF_KEY[key] not in NODE_LOCAL})
    resolved = make_config(values)
    return cfg if resolved == cfg else resolved
