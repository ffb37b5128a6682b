"""The endings a user is told about in one line, with their exit statuses.

Anything raised as a ``Stop`` reaches the user as a single line and its ``exit_status``,
never as a traceback (``cli.py`` maps them); everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_NO_SPACE = 4
EXIT_INTERRUPTED = 130


class Stop(Exception):
    """A run that cannot go on, for a reason the message names along with the fix.

    ``logged``: the run's log already holds the message (the entry point does not repeat it).
    """

    exit_status = 1
    logged = False


class UserError(Stop):
    """Bad input (flag, config, path, file, device): the message names the problem and the fix."""

    exit_status = EXIT_USAGE


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
