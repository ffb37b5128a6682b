"""Event handlers: throughput, loss tracking with the non-finite guard, LR schedule, checkpoints.

Each class attaches itself to the trainer and keeps its numbers on the device between
reporting points, so the training loop itself never waits on the host.
"""

from __future__ import annotations

import logging
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver

from ignite_rn50 import device as dev
from ignite_rn50.errors import UserError

log = logging.getLogger("ignite_rn50")


# --- throughput -------------------------------------------------------------------------------

class FpsMeter:
    """Steady-state global images/s per epoch (DESIGN §4).

    The window opens after ``warmup`` iterations of each epoch and closes at the epoch's last
    iteration, both at device-synchronised time points; evaluation is outside it. Each rank
    measures its own rate and the rates are summed (one all-reduce per epoch). The data-wait
    share is the fraction of the window spent fetching batches, averaged over ranks.
    ignite's Timer measures host time without device synchronisation, hence this class.
    """

    def __init__(self, device: torch.device, batch_per_process: int, warmup: int = 5) -> None:
        self.device, self.batch, self.warmup = device, batch_per_process, warmup
        self.epoch_fps: float | None = None
        self.epoch_data_wait: float | None = None
        self.total_images = 0.0  # global images in all windows
        self.total_seconds = 0.0
        self._reset()

    def _reset(self) -> None:
        self._start: float | None = None
        self._count = 0
        self._wait = 0.0
        self._fetch_started = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._fetch_start)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._fetch_done)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _warmup_for(self, engine: Engine) -> int:
        return min(self.warmup, (engine.state.epoch_length or 1) // 2)

    def _epoch_started(self, engine: Engine) -> None:
        self._reset()
        if self._warmup_for(engine) == 0:
            dev.synchronize(self.device)
            self._start = time.perf_counter()

    def _fetch_start(self, engine: Engine) -> None:
        self._fetch_started = time.perf_counter()

    def _fetch_done(self, engine: Engine) -> None:
        if self._start is not None:
            self._wait += time.perf_counter() - self._fetch_started

    def _iteration_completed(self, engine: Engine) -> None:
        if self._start is not None:
            self._count += 1
            return
        done_in_epoch = (engine.state.iteration - 1) % engine.state.epoch_length + 1
        if done_in_epoch >= self._warmup_for(engine):
            dev.synchronize(self.device)
            self._start = time.perf_counter()

    def _epoch_completed(self, engine: Engine) -> None:
        self.epoch_fps = self.epoch_data_wait = None
        if self._start is None or self._count == 0:
            return
        dev.synchronize(self.device)
        seconds = time.perf_counter() - self._start
        local = torch.tensor([self._count * self.batch / seconds, self._wait / seconds,
                              self._count * self.batch, seconds], dtype=torch.float32)
        world = idist.get_world_size()
        if world > 1:  # float32: HCCL does not reduce float64 on every Ascend chip
            local = idist.all_reduce(local.to(idist.device())).cpu()
        fps, wait, images, secs = local.tolist()
        self.epoch_fps, self.epoch_data_wait = fps, wait / world
        self.total_images += images
        self.total_seconds += secs / world

    @property
    def fps(self) -> float | None:
        """Global images/s over every steady-state window so far."""
        if self.total_seconds == 0:
            return None
        return self.total_images / self.total_seconds


# --- loss, log lines and the non-finite guard ---------------------------------------------------

class Diverged(RuntimeError):
    """Training produced NaN/inf: stop before anything evaluates or saves it."""

    def __init__(self, what: str, epoch: int, iteration: int) -> None:
        super().__init__(f"{what} became NaN/inf at epoch {epoch}, iteration {iteration}")
        self.epoch, self.iteration = epoch, iteration


class NonFiniteLoss(Diverged):
    def __init__(self, epoch: int, iteration: int) -> None:
        super().__init__("loss", epoch, iteration)


@torch.no_grad()
def check_finite_weights(model: torch.nn.Module, engine: Engine) -> None:
    """Once per epoch, before evaluation and saving: the last step's update comes after the
    last loss that was checked, so a finite loss does not prove finite weights."""
    norms = torch.stack([p.detach().float().norm() for p in model.parameters()])
    bad = (~torch.isfinite(norms)).any().float().reshape(1)
    if idist.get_world_size() > 1:
        bad = idist.all_reduce(bad.to(idist.device()), op="MAX")
    if bad.item():
        step = (engine.state.iteration - 1) % engine.state.epoch_length + 1
        raise Diverged("weights", engine.state.epoch, step)


class LossTracker:
    """Per-step losses stay on the device; read every ``print_freq`` iterations and at epoch end.

    ignite's RunningAverage and TerminateOnNan read the loss on the host every iteration (a
    device sync per step). Here a step costs one copy into a preallocated buffer; at each
    reading point the unread slice comes to the host in one transfer and, with several
    processes, one small all-reduce makes every rank agree on the window's mean and on the
    first non-finite iteration, so all ranks stop together.
    """

    def __init__(self, device: torch.device, print_freq: int,
                 on_print: Callable[[Engine, float], None]) -> None:
        self.device, self.print_freq, self.on_print = device, print_freq, on_print
        self.epoch_loss: float | None = None
        self._buffer = torch.zeros(0, device=device)
        self._read = 0  # position in the buffer up to which losses were read
        self._epoch_sum = self._epoch_count = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._store)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.print_freq), self._print)

    @staticmethod
    def _position(engine: Engine) -> int:
        return (engine.state.iteration - 1) % engine.state.epoch_length

    def _epoch_started(self, engine: Engine) -> None:
        if self._buffer.numel() != engine.state.epoch_length:
            self._buffer = torch.zeros(engine.state.epoch_length, device=self.device)
        self._read = engine.state.iteration % engine.state.epoch_length  # mid-epoch resume
        self._epoch_sum = self._epoch_count = 0.0

    def _store(self, engine: Engine) -> None:
        self._buffer[self._position(engine)] = engine.state.output.detach()

    def _read_window(self, engine: Engine) -> tuple[float, float]:
        end = self._position(engine) + 1
        values = self._buffer[self._read:end].double().cpu()
        start, self._read = self._read, end
        finite = torch.isfinite(values)
        first_bad = int(torch.nonzero(~finite)[0]) + start + 1 if not finite.all() else 0
        epoch_first = engine.state.iteration - end  # iterations before this epoch
        stats = torch.tensor([values[finite].sum().item(), float(finite.sum()),
                              float(epoch_first + first_bad) if first_bad else 2.0**52],
                             dtype=torch.float64)
        if idist.get_world_size() > 1:  # float32 on the wire (HCCL), 2**52 stays exact
            summed = idist.all_reduce(stats[:2].float().to(idist.device())).cpu().double()
            first = idist.all_reduce(stats[2:].float().to(idist.device()), op="MIN")
            stats = torch.cat([summed, first.cpu().double()])
        total, count, bad = stats.tolist()
        if bad < 2.0**52:
            bad = int(bad)
            raise NonFiniteLoss((bad - 1) // engine.state.epoch_length + 1,
                                (bad - 1) % engine.state.epoch_length + 1)
        self._epoch_sum += total
        self._epoch_count += count
        return total, count

    def _print(self, engine: Engine) -> None:
        total, count = self._read_window(engine)
        self.on_print(engine, total / max(count, 1))

    def epoch_completed(self, engine: Engine) -> None:
        """Called by the wiring before evaluation, so a NaN epoch is never evaluated or saved."""
        self._read_window(engine)
        self.epoch_loss = self._epoch_sum / max(self._epoch_count, 1)


# --- learning rate --------------------------------------------------------------------------

class LrSchedule:
    """Epoch-wise MultiStepLR (torch's) with an optional per-iteration linear warm-up (torch's
    LinearLR); both are checkpointed through ``state_dict``."""

    def __init__(self, optimizer: torch.optim.Optimizer, milestones: list[int], gamma: float,
                 warmup_iters: int, warmup_factor: float) -> None:
        self.optimizer = optimizer
        self.warmup_iters = warmup_iters
        self.warmup = (torch.optim.lr_scheduler.LinearLR(optimizer, warmup_factor, 1.0,
                                                         total_iters=warmup_iters)
                       if warmup_iters > 0 else None)
        self.decay = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma)

    def attach(self, engine: Engine) -> None:
        if self.warmup is not None:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._warmup_step)
        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: self.decay.step())

    def _warmup_step(self, engine: Engine) -> None:
        if engine.state.iteration <= self.warmup_iters:
            self.warmup.step()

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay.state_dict(),
                "warmup": None if self.warmup is None else self.warmup.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay.load_state_dict(state["decay"])
        if self.warmup is not None and state.get("warmup") is not None:
            self.warmup.load_state_dict(state["warmup"])


# --- checkpoints ------------------------------------------------------------------------------

LAST_PREFIX, BEST_PREFIX, INTERRUPT_PREFIX = "", "best", "interrupted"
LAST_RE = re.compile(r"^checkpoint_(\d+)\.pt$")
BEST_RE = re.compile(r"^best_checkpoint_(\d+)_top1=([0-9.]+)\.pt$")
INTERRUPT_RE = re.compile(r"^interrupted_checkpoint_(\d+)\.pt$")


@dataclass
class RunIdentity:
    """What a checkpoint must match to be resumed: shown by name in a mismatch error."""

    values: dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.values)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mismatched = [f"{k}: checkpoint has {state.get(k)!r}, this run {v!r}"
                      for k, v in self.values.items() if state.get(k) != v]
        if mismatched:
            raise UserError("checkpoint does not match this run (" + "; ".join(mismatched) +
                            "); pass the same options as the run that wrote it, or another "
                            "--output-dir")


class Checkpoints:
    """Last-K by epoch, best-by-top-1, and an interrupt save; all atomic, all loadable with
    ``weights_only=True``; retention survives restarts (saved lists rebuilt from the folder)."""

    def __init__(self, to_save: dict[str, Any], dirname: Path, keep: int,
                 top1: Callable[[], float]) -> None:
        self.to_save, self.dirname = to_save, dirname
        saver = DiskSaver(dirname, require_empty=False, atomic=True, create_dir=False)
        epoch_step = lambda engine, _: engine.state.epoch  # noqa: E731
        self.last = Checkpoint(to_save, saver, n_saved=keep, global_step_transform=epoch_step)
        self.best = Checkpoint(to_save, saver, filename_prefix=BEST_PREFIX, n_saved=1,
                               score_name="top1", score_function=lambda _: top1(),
                               global_step_transform=epoch_step)
        self.interrupt = Checkpoint(to_save, saver, filename_prefix=INTERRUPT_PREFIX, n_saved=1,
                                    global_step_transform=lambda e, _: e.state.iteration)
        if dirname.is_dir():
            self._restore_saved_lists()

    def _restore_saved_lists(self) -> None:
        last, best, interrupted = [], [], []
        for path in self.dirname.iterdir():
            if m := LAST_RE.match(path.name):
                last.append((int(m[1]), path.name))
            elif m := BEST_RE.match(path.name):
                best.append((float(m[2]), path.name))
            elif m := INTERRUPT_RE.match(path.name):
                interrupted.append((int(m[1]), path.name))
        for handler, saved in ((self.last, last), (self.best, best),
                               (self.interrupt, interrupted)):
            handler.load_state_dict({"_saved": sorted(saved)})

    def forget_after(self, epoch: int, iteration: int) -> None:
        """Resuming from an older checkpoint abandons the saves made after it: they are renamed
        ``*.abandoned`` (kept, but never resumed by auto) and leave the retention lists."""
        for handler, limit in ((self.last, epoch), (self.interrupt, iteration)):
            keep = [item for item in handler._saved if item.priority <= limit]
            self._abandon([item.filename for item in handler._saved if item.priority > limit])
            handler._saved = keep
        newer = [item.filename for item in self.best._saved
                 if int(BEST_RE.match(item.filename)[1]) > epoch]
        self._abandon(newer)
        self.best._saved = [item for item in self.best._saved if item.filename not in newer]

    def _abandon(self, names: list[str]) -> None:
        if idist.get_rank() == 0:
            for name in names:
                path = self.dirname / name
                if path.exists():
                    path.rename(path.with_name(name + ".abandoned"))
                    log.info("resuming an earlier point: renamed %s to %s.abandoned", name, name)

    def save_epoch(self, engine: Engine) -> None:
        self.last(engine)
        self.best(engine)
        self._drop_interrupted()

    def save_interrupted(self, engine: Engine) -> Path:
        self.interrupt(engine)
        return self.dirname / self.interrupt.last_checkpoint

    def _drop_interrupted(self) -> None:
        """A completed epoch supersedes any mid-epoch save before it."""
        if idist.get_rank() == 0:
            for _, name in self.interrupt._saved:
                (self.dirname / name).unlink(missing_ok=True)
        self.interrupt._saved.clear()

    @property
    def best_path(self) -> Path | None:
        return self.dirname / self.best.last_checkpoint if self.best.last_checkpoint else None


def find_latest_checkpoint(dirname: Path) -> Path | None:
    """Newest complete checkpoint by training progress. Atomic saves mean a file with a final
    name is complete; temporary files of a killed save are ignored."""
    candidates = []
    for path in dirname.glob("*.pt") if dirname.is_dir() else ():
        if path.stat().st_size == 0:
            continue
        if LAST_RE.match(path.name) or INTERRUPT_RE.match(path.name) or BEST_RE.match(path.name):
            candidates.append(path)
    best: tuple[int, Path] | None = None
    for path in candidates:
        iteration = read_trainer_iteration(path)
        if iteration is not None and (best is None or iteration > best[0]):
            best = (iteration, path)
    return best[1] if best else None


def read_trainer_iteration(path: Path) -> int | None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return int(state["trainer"]["iteration"])
    except Exception:  # noqa: BLE001 - an unreadable candidate is simply not a candidate
        return None


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"--resume {path}: no such file; pass an existing checkpoint or "
                        "--resume auto") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise UserError(f"--resume {path} is not a loadable checkpoint ({type(exc).__name__}); "
                        "pass another file or --resume auto") from None


def restore(to_load: dict[str, Any], state: dict[str, Any], path: Path) -> None:
    missing = [k for k in to_load if k not in state]
    if missing:
        raise UserError(f"--resume {path} lacks {', '.join(missing)}: it was not written by "
                        "this trainer with these options (amp, apex); pass another checkpoint")
    if "identity" in to_load:
        to_load["identity"].load_state_dict(state["identity"])
    try:
        Checkpoint.load_objects({k: v for k, v in to_load.items() if k != "identity"}, state)
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise UserError(f"--resume {path} does not fit this model/optimizer ({first}); pass the "
                        "options of the run that wrote it") from None


# --- signals ----------------------------------------------------------------------------------

class GracefulStop:
    """SIGTERM/SIGINT: finish the current step, then stop; the wiring saves and explains.

    Schedulers send SIGTERM some time before SIGKILL; a second signal stops at once.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
            self._first = time.monotonic()
        elif time.monotonic() - self._first > 2:  # a relayed duplicate is not a second signal
            raise KeyboardInterrupt

    def attach(self, engine: Engine, every: int) -> None:
        """Single process: check after every step (a host flag, free). Several processes: all
        ranks must stop at the same iteration, so they agree with one tiny all-reduce every
        ``every`` iterations instead of paying a collective per step."""
        if idist.get_world_size() == 1:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._check)
        else:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=every), self._check)

    def _check(self, engine: Engine) -> None:
        stop = self.signal_name is not None
        if idist.get_world_size() > 1:
            flag = torch.tensor([float(stop)], device=idist.device())
            stop = bool(idist.all_reduce(flag, op="MAX").item())
        if stop:
            engine.state.stopped_by_signal = self.signal_name or "SIGTERM"
            engine.terminate()
