"""SIGTERM and SIGINT (a scheduler's notice, Ctrl-C): in each rank, finish the current step,
then stop and save; in a launcher, pass them on to the ranks. A second signal more than
``SECOND_SIGNAL_S`` after the first stops at once (``KeyboardInterrupt``): a relayed duplicate
of the first (a terminal's Ctrl-C reaches the launcher and its ranks alike) arrives sooner.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

SECOND_SIGNAL_S = 2.0
# Not a signal: the launcher of this spawned rank is gone (killed, even by SIGKILL). torch's
# spawn asks the kernel for SIGINT when it dies (prctl PR_SET_PDEATHSIG); the rank tells
# that SIGINT from a Ctrl-C by its parent: its parent has changed (the kernel re-parents it
# first), or the launcher's end of the pipe multiprocessing spawned it with is closed. The
# kernel may signal while the launcher's threads are still ending (the rank then belongs to
# one of them for a moment, same pid), so a SIGINT is judged again when the ranks agree,
# after up to LAUNCHER_EXIT_S for the launcher's end. Above every signal number, so that
# the ranks' MAX all-reduce names it when any rank saw it.
LAUNCHER_GONE = 128
LAUNCHER_EXIT_S = 0.5


class SignalCount:
    """The one rule: the first signal asks for a stop, a second one after the grace means now."""

    def __init__(self) -> None:
        self.first: float | None = None

    def is_second(self) -> bool:
        now = time.monotonic()
        if self.first is None:
            self.first = now
            return False
        return now - self.first > SECOND_SIGNAL_S


class GracefulStop:
    """In a rank: the first signal is recorded and the trainer stops after the current step
    (all ranks at the same one); the wiring saves and explains."""

    def __init__(self) -> None:
        self.signum = 0  # the first signal received by this process; 0 = none
        self.stopped_by: str | None = None  # the signal that stopped the job, once agreed
        self._count = SignalCount()
        self._previous: dict[int, Any] = {}
        self._launcher = multiprocessing.parent_process()  # a spawned rank's; None elsewhere

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self._count.is_second():
            raise KeyboardInterrupt
        self.signum = self.signum or self._cause(signum, wait_s=0)

    def _cause(self, signum: int, wait_s: float) -> int:
        """LAUNCHER_GONE for a SIGINT whose launcher is gone, or ends within ``wait_s``."""
        launcher = self._launcher
        if signum != signal.SIGINT or launcher is None:
            return signum
        if os.getppid() != launcher.pid:
            return LAUNCHER_GONE
        launcher.join(wait_s)  # its sentinel: the pipe's end that only the launcher holds
        return signum if launcher.is_alive() else LAUNCHER_GONE

    @property
    def reason(self) -> str:
        """What stopped the job, for the log: ``by SIGTERM``, or the launcher's end."""
        if self.stopped_by == "launcher gone":
            return "because the launcher is gone (it was killed)"
        return f"by {self.stopped_by}"

    def attach(self, engine: Engine, every: int) -> None:
        """Single process: check after every step (a host flag, free). Several processes: all
        ranks must stop at the same iteration, so they agree with one tiny all-reduce every
        ``every`` iterations instead of paying a collective per step."""
        if idist.get_world_size() == 1:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._check)
        else:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=every), self._check)

    def _check(self, engine: Engine) -> None:
        signum = self.signum
        if signum == signal.SIGINT:
            signum = self.signum = self._cause(signum, wait_s=LAUNCHER_EXIT_S)
        if idist.get_world_size() > 1:  # every rank learns which signal stopped the job
            flag = torch.tensor([float(signum)], device=idist.device())
            signum = int(idist.all_reduce(flag, op="MAX").item())
        if signum:
            self.stopped_by = ("launcher gone" if signum == LAUNCHER_GONE
                               else signal.Signals(signum).name)
            engine.terminate()


class SignalRelay:
    """In a launcher: SIGTERM and SIGINT go on to the spawned ranks, which stop after an
    agreed step and save; a second SIGINT after the grace stops the job now."""

    def __init__(self) -> None:
        self._count = SignalCount()

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self.relay)
        signal.signal(signal.SIGINT, self.relay)

    def relay(self, signum: int, frame: Any) -> None:
        for child in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)
        if signum == signal.SIGINT and self._count.is_second():
            raise KeyboardInterrupt
