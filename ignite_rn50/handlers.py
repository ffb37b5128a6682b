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
from typing import TYPE_CHECKING, Any, Callable

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver

from ignite_rn50 import device as dev
from ignite_rn50 import distributed
from ignite_rn50.errors import UserError

if TYPE_CHECKING:
    from ignite_rn50.engine import Parts

log = logging.getLogger("ignite_rn50")


# --- throughput -------------------------------------------------------------------------------

class FpsMeter:
    """Steady-state global images/s per epoch (README, "ModelZoo scripts": ActualFPS).

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


class IntervalLog:
    """The line every ``print_freq`` iterations (LossTracker's reading point): the interval's
    mean loss, the lr that step used, and global img/s since the previous line. The loss was
    just read from the device, so the clock here is synchronised. Rank 0 also appends
    ``iteration,epoch,loss,lr`` to ``loss_file`` (rows past ``resumed_at`` are dropped first:
    a killed run logged iterations that are now trained again)."""

    def __init__(self, lr: Callable[[], float], images_per_step: int, epochs: int,
                 loss_file: Path | None, resumed_at: int = 0) -> None:
        self.lr, self.images_per_step, self.epochs = lr, images_per_step, epochs
        self.loss_file = loss_file if idist.get_rank() == 0 else None
        self._time, self._iteration = time.perf_counter(), resumed_at
        if self.loss_file is not None:
            self._keep_rows_up_to(resumed_at)

    def _keep_rows_up_to(self, iteration: int) -> None:
        assert self.loss_file is not None
        rows = self.loss_file.read_text().splitlines()[1:] if self.loss_file.is_file() else []
        kept = [r for r in rows if int(r.split(",")[0]) <= iteration]
        self.loss_file.write_text("".join(f"{r}\n" for r in ["iteration,epoch,loss,lr", *kept]))

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._restart)

    def _restart(self, engine: Engine) -> None:
        self._time, self._iteration = time.perf_counter(), engine.state.iteration

    def __call__(self, engine: Engine, loss: float) -> None:
        now, state = time.perf_counter(), engine.state
        rate = (state.iteration - self._iteration) * self.images_per_step / max(
            now - self._time, 1e-9)
        self._time, self._iteration = now, state.iteration
        lr = self.lr()
        state.metrics.update(loss=loss, lr=lr)
        if idist.get_rank() != 0:
            return
        step = (state.iteration - 1) % state.epoch_length + 1
        log.info("Epoch [%d/%d] Iter [%d/%d] loss %.4f lr %.6f %.1f img/s", state.epoch,
                 self.epochs, step, state.epoch_length, loss, lr, rate)
        if self.loss_file is not None:
            with self.loss_file.open("a") as fh:
                fh.write(f"{state.iteration},{state.epoch},{loss:.6f},{lr:.8g}\n")


def feed_epochs(trainer: Engine, train_data: Any) -> None:
    """Each epoch's batches depend only on (seed, rank, epoch); a resumed epoch starts at its
    first batch not yet trained."""

    @trainer.on(Events.EPOCH_STARTED)
    def _set_epoch(engine: Engine) -> None:
        done = engine.state.iteration % engine.state.epoch_length if engine.state.iteration else 0
        train_data.set_epoch(engine.state.epoch, start_batch=done)


class EpochEnd:
    """At each epoch end, in this order: the epoch's loss (a NaN stops here), finite weights,
    BN statistics from rank 0 (several processes), evaluation, one history row, the log
    line. Nothing diverged is ever evaluated or saved: checkpoint handlers run after this."""

    def __init__(self, model: torch.nn.Module, evaluator: Engine, eval_batches: Any,
                 losses: LossTracker, fps: FpsMeter, epoch_lr: Callable[[], float],
                 record: Any, epochs: int) -> None:
        self.model, self.evaluator, self.eval_batches = model, evaluator, eval_batches
        self.losses, self.fps, self.epoch_lr = losses, fps, epoch_lr
        self.record, self.epochs = record, epochs
        self._started = time.perf_counter()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _epoch_started(self, engine: Engine) -> None:
        self._started = time.perf_counter()

    def __call__(self, engine: Engine) -> None:
        train_seconds = time.perf_counter() - self._started
        self.losses.epoch_completed(engine)
        check_finite_weights(self.model, engine)
        if idist.get_world_size() > 1:
            distributed.sync_buffers(self.model)
        eval_started = time.perf_counter()
        self.evaluator.run(self.eval_batches)
        metrics = self.evaluator.state.metrics
        row = {"epoch": engine.state.epoch, "train_loss": self.losses.epoch_loss,
               "val_loss": metrics["loss"], "val_top1": metrics["top1"],
               "val_top5": metrics["top5"], "lr": self.epoch_lr(), "fps": self.fps.epoch_fps,
               "data_wait": self.fps.epoch_data_wait, "train_seconds": train_seconds,
               "eval_seconds": time.perf_counter() - eval_started}
        self.record.add(row)
        engine.state.metrics.update(epoch_loss=row["train_loss"], fps=row["fps"] or 0.0,
                                    data_wait=row["data_wait"] or 0.0, epoch_lr=row["lr"])
        if idist.get_rank() == 0:
            log_epoch(row, self.epochs)


def log_epoch(row: dict[str, Any], epochs: int) -> None:
    log.info("Epoch [%d/%d] done: train loss %.4f | val loss %.4f top-1 %.2f%% top-5 %.2f%% | "
             "%s img/s, data wait %s", row["epoch"], epochs, row["train_loss"], row["val_loss"],
             100 * row["val_top1"], 100 * row["val_top5"],
             f"{row['fps']:.1f}" if row["fps"] else "n/a",
             f"{100 * row['data_wait']:.1f}%" if row["data_wait"] is not None else "n/a")


def attach_all(trainer: Engine, evaluator: Engine, parts: Parts, train_data: Any,
               eval_batches: Any, record: Any, stop: GracefulStop, *, device: torch.device,
               batch: int, print_freq: int, epochs: int,
               loss_file: Path | None) -> FpsMeter:
    """The trainer's handlers, in the order they must run at each event: the lr decay at an
    epoch's end runs before EpochEnd (which reports the epoch's own lr) and before the
    checkpoint handlers attached after this (a saved schedule holds the next epoch's lr).
    Returns the FPS meter, whose run-wide figure summary.json reports."""
    fps = FpsMeter(device, batch)
    fps.attach(trainer)
    parts.schedule.attach(trainer)
    feed_epochs(trainer, train_data)
    interval = IntervalLog(lambda: parts.schedule.lr, batch * idist.get_world_size(), epochs,
                           loss_file, resumed_at=trainer.state.iteration)
    interval.attach(trainer)
    losses = LossTracker(device, print_freq, interval)
    losses.attach(trainer)
    stop.attach(trainer, every=print_freq)
    EpochEnd(parts.model, evaluator, eval_batches, losses, fps, lambda: parts.schedule.epoch_lr,
             record, epochs).attach(trainer)
    return fps


# --- learning rate --------------------------------------------------------------------------

class LrSchedule:
    """Per-epoch lr policy with an optional per-iteration linear warm-up, all torch schedulers
    (checkpointed through ``state_dict``):

    - step: MultiStepLR, x ``gamma`` at each milestone epoch (mmcv's "step" policy);
    - cosine: CosineAnnealingLR from lr to ``min_lr`` over ``epochs``, stepped once per epoch
      (mmcv's CosineAnnealing by epoch: epoch e runs at min + (lr - min)(1 + cos(pi e/E))/2);
    - warm-up: LinearLR from ``warmup_factor`` x lr over ``warmup_iters`` iterations.

    The warm-up steps before each iteration, so the optimizer's lr during and after a step is
    the lr that step used (what the log line shows); ``epoch_lr`` is the epoch's first lr.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, milestones: list[int], gamma: float,
                 warmup_iters: int, warmup_factor: float, *, policy: str = "step",
                 epochs: int | None = None, min_lr: float = 0.0) -> None:
        self.optimizer, self.policy, self.warmup_iters = optimizer, policy, warmup_iters
        sched = torch.optim.lr_scheduler
        self.warmup = (sched.LinearLR(optimizer, warmup_factor, 1.0, total_iters=warmup_iters)
                       if warmup_iters > 0 else None)
        if policy == "cosine":
            if not epochs:
                raise ValueError("the cosine policy needs the number of epochs")
            self.decay: Any = sched.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=min_lr)
        else:
            self.decay = sched.MultiStepLR(optimizer, milestones, gamma)
        self.epoch_lr = self.lr

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        if self.warmup is not None:
            engine.add_event_handler(Events.ITERATION_STARTED, self._iteration_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: self.decay.step())

    def _warm_up_to(self, steps: int) -> None:
        """Bring the warm-up to ``steps`` steps (also right after a resume, whichever event
        the checkpoint was saved at)."""
        while self.warmup is not None and self.warmup.last_epoch < min(steps,
                                                                        self.warmup_iters):
            self.warmup.step()

    def _epoch_started(self, engine: Engine) -> None:
        self._warm_up_to(engine.state.iteration)  # the lr of the coming iteration
        self.epoch_lr = self.lr

    def _iteration_started(self, engine: Engine) -> None:
        self._warm_up_to(engine.state.iteration - 1)  # iteration i runs after i - 1 steps

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "decay": self.decay.state_dict(),
                "warmup": None if self.warmup is None else self.warmup.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        policy = state.get("policy", "step")  # checkpoints before the cosine policy
        if policy != self.policy:
            raise UserError(f"checkpoint was written with --lr-policy {policy}, this run has "
                            f"{self.policy}; pass --lr-policy {policy} to resume it")
        saved_epochs = state["decay"].get("T_max")
        if self.policy == "cosine" and saved_epochs != self.decay.T_max:
            raise UserError(f"checkpoint anneals the lr over {saved_epochs} epochs (cosine), "
                            f"this run over {self.decay.T_max}; pass --epochs {saved_epochs}")
        self.decay.load_state_dict(state["decay"])
        if self.warmup is not None and state.get("warmup") is not None:
            self.warmup.load_state_dict(state["warmup"])


# --- checkpoints ------------------------------------------------------------------------------

BEST_PREFIX, INTERRUPT_PREFIX = "best", "interrupted"
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


def setup_checkpoints(parts: Parts, trainer: Engine, evaluator: Engine, record: Any,
                      num_classes: int, out: Path, keep: int) -> Checkpoints:
    """One ``to_save`` dict serves saving and resuming; ``identity`` names what a checkpoint
    must match to be resumed."""
    identity = RunIdentity({"depth": parts.depth, "num_classes": num_classes,
                            "optimizer": type(parts.optimizer).__name__,
                            "amp": parts.precision.describe()})
    to_save: dict[str, Any] = {"model": parts.model, "optimizer": parts.optimizer,
                               "lr_scheduler": parts.schedule, "trainer": trainer,
                               "record": record, "identity": identity}
    if parts.scaler is not None:
        to_save["scaler"] = parts.scaler
    if parts.precision.backend == "apex":
        to_save["amp"] = dev.apex_state()
    return Checkpoints(to_save, out, keep, top1=lambda: evaluator.state.metrics["top1"])


def resume(spec: str | None, checkpoints: Checkpoints, trainer: Engine,
           epoch_length: int) -> Path | None:
    """--resume: restore every saved object from the given checkpoint, or with ``auto`` the
    newest complete one in the folder. Returns the file, or None when starting fresh."""
    if spec is None:
        return None
    out = checkpoints.dirname
    path = find_latest_checkpoint(out) if spec == "auto" else Path(spec)
    if path is None:
        log.info("--resume auto: no checkpoint in %s yet, starting from scratch", out)
        return None
    restore(checkpoints.to_save, load_checkpoint(path), path)
    if trainer.state.epoch_length != epoch_length:
        raise UserError(f"--resume {path} was written with {trainer.state.epoch_length} "
                        f"iterations per epoch, this run has {epoch_length} (batch size, "
                        "processes, --max-iters or data differ); resume with the options of "
                        "that run")
    checkpoints.forget_after(trainer.state.epoch, trainer.state.iteration)
    log.info("resumed from %s (epoch %d, iteration %d)", path, trainer.state.epoch,
             trainer.state.iteration)
    return path


# --- signals ----------------------------------------------------------------------------------

class GracefulStop:
    """SIGTERM/SIGINT: finish the current step, then stop; the wiring saves and explains.

    Schedulers send SIGTERM some time before SIGKILL; a second signal stops at once.
    """

    def __init__(self) -> None:
        self.signum = 0  # the first signal received by this process; 0 = none
        self._first = 0.0
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.signum:
            self.signum, self._first = signum, time.monotonic()
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
        signum = self.signum
        if idist.get_world_size() > 1:  # every rank learns which signal stopped the job
            flag = torch.tensor([float(signum)], device=idist.device())
            signum = int(idist.all_reduce(flag, op="MAX").item())
        if signum:
            engine.state.stopped_by_signal = signal.Signals(signum).name
            engine.terminate()
