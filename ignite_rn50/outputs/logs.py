"""The run's log and the environment it ran in: the first lines of every log, the
``environment`` section of a ClearML task, what a bug report starts with."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import platform
import shlex
import sys
from pathlib import Path

import ignite.distributed as idist
import torch
import torchvision

log = logging.getLogger("ignite_rn50")
NOT_VERSIONS = {"command", "device", "device_count", "backend"}  # the rest of the lines


def setup_logging(rank: int, log_file: Path | None) -> None:
    """Rank 0 logs INFO to the console and to the run's text log; other ranks warnings only."""
    log.handlers.clear()
    log.propagate = False
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt if rank == 0 else logging.Formatter(f"[rank {rank}] %(message)s"))
    log.addHandler(console)
    if log_file is not None:
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(fmt)
        log.addHandler(file_handler)


def close_logging() -> None:
    """The run's log file closed, the console left (a run inside a longer-lived process)."""
    for handler in list(log.handlers):
        handler.close()
        log.removeHandler(handler)


def command_line() -> str:
    """This process's command as the user typed it (``python -m pkg.mod`` shows as such)."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(".py") and "ignite_rn50" in Path(argv[0]).parts:
        argv = ["-m", f"ignite_rn50.{Path(argv[0]).stem}", *argv[1:]]
    return shlex.join([Path(sys.executable).name, *argv])


def installed_version(package: str, module: str) -> str | None:
    """A package's version without importing it (apex loads CUDA/NPU extensions); None when
    its module is not installed."""
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "installed (version unknown)"


def environment(device_info: dict[str, str], backend: str | None) -> dict[str, str]:
    """Everything a bug report starts with: command, versions, device, backend."""
    env = {"command": command_line(), "python": platform.python_version(),
           "torch": torch.__version__, "torchvision": torchvision.__version__}  # build tags too
    for package, module in (("pytorch-ignite", "ignite"), ("clearml", "clearml")):
        env[package] = installed_version(package, module) or "not installed"
    apex = installed_version("apex", "apex")
    env.update(device_info, **({"apex": apex} if apex else {}))
    env["backend"] = f"{backend} ({idist.get_world_size()} processes)" if backend else \
        "none (1 process)"
    return env


def log_environment(env: dict[str, str]) -> None:
    versions = ", ".join(f"{k} {v}" for k, v in env.items() if k not in NOT_VERSIONS)
    log.info("command: %s", env["command"])
    log.info("versions: %s", versions)
    log.info("device: %s x %s, backend %s", env["device"], env["device_count"], env["backend"])
