"""The endings a user is told about in one line, with their exit statuses.

Anything raised as a ``Stop`` reaches the user as a single line and its ``exit_status``,
never as a traceback (``cli.py`` maps them); everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import os
import signal
from pathlib import Path
from types import ModuleType

EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_NO_SPACE = 4
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM: what a shell reports of a process SIGTERM ended


class Stop(Exception):
    """A run that cannot go on, for a reason the message names along with the fix.

    ``logged``: the run's log already holds the message (the entry point does not repeat it).
    """

    exit_status = 1
    logged = False


class UserError(Stop):
    """Bad input (flag, config, path, file, device): the message names the problem and the fix."""

    exit_status = EXIT_USAGE


def stopped_on_bad_input(exc: BaseException) -> bool:
    """Whether a job ended with ``EXIT_USAGE``: a ``UserError`` raised in this one process, a
    rank leaving with its status (``SystemExit``, torchrun), or a spawned rank's exit code
    (``torch.multiprocessing.ProcessExitedException``, read by name: this module is light)."""
    if isinstance(exc, Stop):
        return exc.exit_status == EXIT_USAGE
    status = exc.code if isinstance(exc, SystemExit) else getattr(exc, "exit_code", None)
    return status == EXIT_USAGE


class Diverged(Stop):
    """Training produced NaN/inf: stop before anything evaluates or saves it."""

    exit_status = EXIT_DIVERGED

    def __init__(self, what: str, epoch: int, iteration: int) -> None:
        super().__init__(f"{what} became NaN/inf at epoch {epoch}, iteration {iteration}")
        self.epoch, self.iteration = epoch, iteration


class NonFiniteLoss(Diverged):
    def __init__(self, epoch: int, iteration: int) -> None:
        super().__init__("loss", epoch, iteration)


class OutOfSpace(Stop):
    """A save found the disk full: what is already written stays as it was."""

    exit_status = EXIT_NO_SPACE


class Terminated(KeyboardInterrupt):
    """SIGTERM where no graceful stop is set up (parsing, imports, evaluate, export): stop at
    once as a Ctrl-C does, so every ``finally`` runs (temporary files go), and end with one
    line and ``exit_status``. A KeyboardInterrupt, so whatever lets a Ctrl-C through lets
    this through too; the runner tells the two apart."""

    exit_status = EXIT_TERMINATED


def raise_terminated(signum: int, frame: object) -> None:
    """The SIGTERM handler of the runner (``cli.main``) and of each rank (``rank_main``)."""
    raise Terminated


def install_sigterm() -> object:
    """``raise_terminated`` for SIGTERM unless the process was started with it ignored;
    returns the previous handler, for ``signal.signal`` to put back."""
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_IGN:
        signal.signal(signal.SIGTERM, raise_terminated)
    return previous


def restore_sigterm(previous: object) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)  # type: ignore[arg-type]


def interruption_status(exc: KeyboardInterrupt) -> tuple[str, int]:
    """(word, exit status) of a Ctrl-C or a SIGTERM."""
    if isinstance(exc, Terminated):
        return "terminated", EXIT_TERMINATED
    return "interrupted", EXIT_INTERRUPTED


def import_optional(module: str, missing: str, broken_fix: str) -> ModuleType:
    """An optional package (torch_npu, apex), every way its import can fail one UserError:
    ``missing`` when it is not installed, ``<module> is installed but failed to import
    (...); <broken_fix>`` when importing it fails. BaseException: old torch_npu releases
    call sys.exit() when CANN is missing; a Ctrl-C still goes through."""
    if importlib.util.find_spec(module) is None:
        raise UserError(missing)
    try:
        return importlib.import_module(module)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001
        raise UserError(f"{module} is installed but failed to import ({type(exc).__name__}: "
                        f"{exc}); {broken_fix}") from None


def path_problem(path: Path) -> str | None:
    """Why ``path``, present as a name, cannot be used: a symlink loop, a dangling symlink, no
    permission on the way; None when it stats (or simply does not exist)."""
    try:
        path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symlink loop"
        if path.is_symlink():
            return f"is a dangling symlink (to {os.readlink(path)})"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return "cannot be reached (permission denied)"
    return None
