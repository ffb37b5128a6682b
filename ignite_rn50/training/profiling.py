"""--profile-steps A:B: training iterations A to B (1-based, inclusive) recorded by
torch.profiler (torch_npu's on NPU, through the device seam) into ``<output-dir>/profile``,
on rank 0. The trace (``*.pt.trace.json``) opens in TensorBoard's profiler plugin
(``tensorboard --logdir <output-dir>/profile``) and in https://ui.perfetto.dev."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from ignite_rn50.system import device as dev

log = logging.getLogger("ignite_rn50")


class StepProfiler:
    """Starts the profiler before iteration ``first`` and stops it after ``last`` (the trace
    is written then); a resumed run past ``first`` records what is left of the range."""

    def __init__(self, device: Any, folder: Path, steps: tuple[int, int]) -> None:
        self.device, self.folder, (self.first, self.last) = device, folder, steps
        self.profile: Any = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self._maybe_start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._maybe_stop)
        engine.add_event_handler(Events.COMPLETED, self._stop)
        engine.add_event_handler(Events.TERMINATE, self._stop)

    def _maybe_start(self, engine: Engine) -> None:
        it = engine.state.iteration  # already incremented: the iteration about to run
        if self.profile is None and self.first <= it <= self.last:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.profile = dev.profiler(self.device, self.folder, "rank0")
            self.profile.start()
            log.info("profiling iterations %d..%d into %s", it, self.last, self.folder)

    def _maybe_stop(self, engine: Engine) -> None:
        if engine.state.iteration >= self.last:
            self._stop(engine)

    def _stop(self, engine: Engine) -> None:
        if self.profile is None:
            return
        profile, self.profile = self.profile, None
        profile.stop()  # the trace handler writes the file here
        traces = sorted(self.folder.glob("*.json*"), key=lambda p: p.stat().st_mtime)
        log.info("profile written: %s (open with tensorboard --logdir %s, or in "
                 "ui.perfetto.dev)", traces[-1] if traces else self.folder, self.folder)
