"""One runner for every entry point (``run``, ``evaluate``, ``export``): parse first, import
the heavy machinery after (``--help`` and a mistyped flag answer before torch loads), and map
every ending to one line and an exit status (in each rank of a job:
``system.distributed.rank_main``):

- a ``Stop`` (``UserError``: 2, ``Diverged``: 3, ``OutOfSpace``: 4): its message, one line;
- Ctrl-C: ``<prog>: interrupted``, 130;
- a rank that failed: its status (the rank said why), or 1 with its traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

from ignite_rn50.errors import EXIT_INTERRUPTED, Stop

os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")  # see device.import_torch_npu


def main(prog: str, parse: Callable[[list[str] | None], Any], launch: Callable[[Any], None],
         argv: list[str] | None = None) -> int:
    """``launch(parse(argv))``; returns the exit status."""
    try:
        job = parse(argv)
    except Stop as exc:
        return _report(prog, exc)
    try:
        import torch.multiprocessing as mp  # after parsing: only a job that runs needs torch
    except KeyboardInterrupt:  # seconds of imports on a loaded machine: Ctrl-C lands here too
        return _interrupted(prog)
    try:
        launch(job)
    except Stop as exc:
        return _report(prog, exc)
    except mp.ProcessRaisedException as exc:
        sys.stderr.write(f"{prog}: a process of the job failed:\n{exc}\n")
        return 1
    except mp.ProcessExitedException as exc:
        return _rank_exit_status(prog, exc.exit_code, exc.error_index)
    except KeyboardInterrupt:
        return _interrupted(prog)
    return 0


def _interrupted(prog: str) -> int:
    sys.stderr.write(f"{prog}: interrupted\n")
    return EXIT_INTERRUPTED


def _report(prog: str, exc: Stop) -> int:
    if not exc.logged:
        sys.stderr.write(f"{prog}: error: {exc}\n")
    return exc.exit_status


def _rank_exit_status(prog: str, code: int | None, index: int) -> int:
    """The job's status from the rank that ended it; ranks that said why are not repeated."""
    said = _stop_statuses()
    if code == EXIT_INTERRUPTED:
        sys.stderr.write(f"{prog}: interrupted\n")
    elif code not in said:
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
