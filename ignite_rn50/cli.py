"""One runner for every entry point (``run``, ``evaluate``, ``export``): parse first, import
the heavy machinery after (``--help`` and a mistyped flag answer before torch loads), and map
every ending to one line and an exit status (in each rank of a job:
``system.distributed.rank_main``):

- a ``Stop`` (``UserError``: 2, ``Diverged``: 3, ``OutOfSpace``: 4): its message, one line;
- Ctrl-C: ``<prog>: interrupted``, 130; SIGTERM (where no graceful stop handles it):
  ``<prog>: terminated``, 143; a rank ended by another signal: named, 128 + its number;
- a rank that failed: its status (the rank said why), or 1 with its traceback.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

from ignite_rn50.errors import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    Stop,
    UserError,
    install_sigterm,
    interruption_status,
    path_problem,
    restore_sigterm,
)

os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")  # see device.import_torch_npu


def main(prog: str, parse: Callable[[list[str] | None], Any], launch: Callable[[Any], None],
         argv: list[str] | None = None) -> int:
    """``launch(parse(argv))``; returns the exit status. SIGTERM stops it as Ctrl-C does
    wherever nothing else handles it (the ranks of a training run stop gracefully)."""
    previous = install_sigterm()
    try:
        return _run(prog, parse, launch, argv)
    except KeyboardInterrupt as exc:  # parsing, seconds of imports, or the job itself
        return _interrupted(prog, exc)
    finally:
        restore_sigterm(previous)


def _run(prog: str, parse: Callable[[list[str] | None], Any], launch: Callable[[Any], None],
         argv: list[str] | None) -> int:
    try:
        job = parse(argv)
    except Stop as exc:
        return _report(prog, exc)
    import torch.multiprocessing as mp  # after parsing: only a job that runs needs torch

    try:
        launch(job)
    except Stop as exc:
        return _report(prog, exc)
    except mp.ProcessRaisedException as exc:
        sys.stderr.write(f"{prog}: a process of the job failed:\n{exc}\n")
        return 1
    except mp.ProcessExitedException as exc:
        return _rank_exit_status(prog, exc.exit_code, exc.error_index)
    return 0


def _interrupted(prog: str, exc: KeyboardInterrupt) -> int:
    word, status = interruption_status(exc)
    sys.stderr.write(f"{prog}: {word}\n")
    return status


def _report(prog: str, exc: Stop) -> int:
    if not exc.logged:
        sys.stderr.write(f"{prog}: error: {exc}\n")
    return exc.exit_status


def _rank_exit_status(prog: str, code: int | None, index: int) -> int:
    """The job's status from the rank that ended it; ranks that said why are not repeated.
    A rank a signal ended (negative code) ends the job as that signal would have: Ctrl-C
    and SIGTERM as here, any other one as 128 + its number, named."""
    if code is not None and code < 0:
        signum = -code
        if signum in (signal.SIGINT, signal.SIGTERM):
            code = EXIT_INTERRUPTED if signum == signal.SIGINT else EXIT_TERMINATED
        else:
            sys.stderr.write(f"{prog}: error: process {index} of the job was killed by "
                             f"{signal.Signals(signum).name}; the job was stopped\n")
            return 128 + signum
    if code == EXIT_INTERRUPTED:
        sys.stderr.write(f"{prog}: interrupted\n")
    elif code == EXIT_TERMINATED:
        sys.stderr.write(f"{prog}: terminated\n")
    elif code not in _stop_statuses():
        sys.stderr.write(f"{prog}: error: process {index} of the job exited with status "
                         f"{code}; the job was stopped\n")
    return code if code and code > 0 else 1


def _stop_statuses() -> set[int]:
    found, todo = set(), [Stop]
    while todo:
        cls = todo.pop()
        found.add(cls.exit_status)
        todo.extend(cls.__subclasses__())
    return found - {Stop.exit_status}


def existing_file(flag: str, text: str) -> Path:
    """An input file (--checkpoint), or one line saying why it cannot be read."""
    path = Path(text).expanduser()
    problem = path_problem(path)
    if problem or not path.is_file():
        why = f" {problem}" if problem else ": no such file"
        raise UserError(f"{flag} {path}{why}; pass an existing checkpoint")
    return path


def add_weights_flag(parser: Any) -> None:
    """--weights for the commands that read a checkpoint (evaluate, export, predict)."""
    parser.add_argument("--weights", choices=("ema", "raw"), default=None,
                        help="which weights of a checkpoint: ema = the EMA of a run with "
                        "--ema-momentum, raw = the trained model (default: ema when the file "
                        "holds EMA weights, else raw)")
