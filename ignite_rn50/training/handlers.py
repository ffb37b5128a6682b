"""The trainer's per-step and per-epoch handlers: throughput, the loss with its non-finite
guard, the interval log line, and the end of an epoch (evaluation, history, log).

Per step they only store on the device (or read host clocks); values come to the host at
the ``--print-freq`` points and at an epoch's end. ``EpochEnd`` runs the end of an epoch in
a fixed order and then fires the run's events (``events.py``), to which checkpoints,
summary and trackers attach, so that registration order decides nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from torch import nn

from ignite_rn50.errors import Diverged, NonFiniteLoss
from ignite_rn50.events import RunEvents
from ignite_rn50.outputs import perclass
from ignite_rn50.system import device as dev
from ignite_rn50.system import distributed
from ignite_rn50.training.context import RunContext, RunRecord

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

    def __init__(self, device: torch.device, warmup: int = 5,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.device, self.warmup, self.clock = device, warmup, clock
        self.epoch_fps: float | None = None
        self.epoch_data_wait: float | None = None
        self.total_images = 0.0  # global images in all windows
        self.total_seconds = 0.0
        self._reset()

    def _reset(self) -> None:
        self._start: float | None = None
        self._count = 0
        self._images = 0  # counted per batch: an epoch's last one may be partial
        self._wait = 0.0
        self._fetch_started = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._fetch_start)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._fetch_done)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)

    def _warmup_for(self, engine: Engine) -> int:
        return min(self.warmup, (engine.state.epoch_length or 1) // 2)

    def _epoch_started(self, engine: Engine) -> None:
        self._reset()
        if self._warmup_for(engine) == 0:
            dev.synchronize(self.device)
            self._start = self.clock()

    def _fetch_start(self, engine: Engine) -> None:
        self._fetch_started = self.clock()

    def _fetch_done(self, engine: Engine) -> None:
        if self._start is not None:
            self._wait += self.clock() - self._fetch_started

    def _iteration_completed(self, engine: Engine) -> None:
        if self._start is not None:
            self._count += 1
            self._images += len(engine.state.batch[1])  # a shape: no device read
            return
        done_in_epoch = (engine.state.iteration - 1) % engine.state.epoch_length + 1
        if done_in_epoch >= self._warmup_for(engine):
            dev.synchronize(self.device)
            self._start = self.clock()

    def epoch_completed(self, engine: Engine) -> None:
        """Called by EpochEnd first, so evaluation stays outside the window."""
        self.epoch_fps = self.epoch_data_wait = None
        if self._start is None or self._count == 0:
            return
        dev.synchronize(self.device)
        seconds = self.clock() - self._start
        local = torch.tensor([self._images / seconds, self._wait / seconds, self._images,
                              seconds], dtype=torch.float32)
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
        self.grad_norm: Callable[[], torch.Tensor | None] | None = None  # --clip-grad-norm
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
        norm = self.grad_norm() if self.grad_norm is not None else None
        if norm is not None:  # read here only: at the --print-freq points
            state.metrics["grad_norm"] = float(norm)
        if idist.get_rank() == 0:
            self._write(state, loss, lr, rate)
        engine.fire_event(RunEvents.ITERATION_LOGGED)

    def _write(self, state: Any, loss: float, lr: float, rate: float) -> None:
        step = (state.iteration - 1) % state.epoch_length + 1
        norm = state.metrics.get("grad_norm") if self.grad_norm is not None else None
        log.info("Epoch [%d/%d] Iter [%d/%d] loss %.4f lr %.6f %.1f img/s%s", state.epoch,
                 self.epochs, step, state.epoch_length, loss, lr, rate,
                 "" if norm is None else f" grad_norm {norm:.4f}")
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


@dataclass(frozen=True)
class Scoring:
    """What each epoch's end scores, and with what: the evaluator and the test batches."""

    evaluator: Engine
    batches: Iterable
    class_names: tuple[str, ...] | None = None
    ema_evaluator: Engine | None = None  # --ema-momentum: the average scored too (val_ema)


class EpochEnd:
    """At each epoch end, in this order: the throughput window closes, the epoch's loss (a
    NaN stops here), finite weights, BN statistics from rank 0 (several processes),
    evaluation, one history row, the log line; then ``EPOCH_EVALUATED`` and ``EPOCH_SAVED``
    fire. Nothing diverged is ever evaluated or saved."""

    def __init__(self, model: nn.Module, scoring: Scoring, record: RunRecord, *,
                 measures: tuple[LossTracker, FpsMeter], epoch_lr: Callable[[], float]) -> None:
        self.model, self.scoring, self.record, self.epoch_lr = model, scoring, record, epoch_lr
        self.losses, self.fps = measures
        self._started = time.perf_counter()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _epoch_started(self, engine: Engine) -> None:
        self._started = time.perf_counter()

    def __call__(self, engine: Engine) -> None:
        self.fps.epoch_completed(engine)
        train_seconds = time.perf_counter() - self._started
        self.losses.epoch_completed(engine)
        check_finite_weights(self.model, engine)
        if idist.get_world_size() > 1:
            distributed.sync_buffers(self.model)
        eval_started = time.perf_counter()
        self.scoring.evaluator.run(self.scoring.batches)
        metrics = self.scoring.evaluator.state.metrics
        row = {"epoch": engine.state.epoch, "train_loss": self.losses.epoch_loss,
               "val_loss": metrics["loss"], "val_top1": metrics["top1"],
               "val_top5": metrics["top5"], "lr": self.epoch_lr(),
               "fps": self.fps.epoch_fps, "data_wait": self.fps.epoch_data_wait,
               "train_seconds": train_seconds, "eval_seconds": time.perf_counter() - eval_started}
        confusion = metrics["confusion"].cpu().tolist()  # one transfer an epoch
        if self.scoring.ema_evaluator is not None:  # BN statistics: the model's (copied)
            self.scoring.ema_evaluator.run(self.scoring.batches)
            ema = self.scoring.ema_evaluator.state.metrics
            row.update(val_ema_loss=ema["loss"], val_ema_top1=ema["top1"],
                       val_ema_top5=ema["top5"])
        self.record.add(row, perclass.summary_entry(confusion, self.scoring.class_names,
                                                    engine.state.epoch))
        engine.state.metrics.update(epoch_loss=row["train_loss"], fps=row["fps"] or 0.0,
                                    data_wait=row["data_wait"] or 0.0, epoch_lr=row["lr"])
        if idist.get_rank() == 0:
            log_epoch(row, engine.state.max_epochs)
        engine.fire_event(RunEvents.EPOCH_EVALUATED)
        engine.fire_event(RunEvents.EPOCH_SAVED)


def log_epoch(row: dict[str, Any], epochs: int) -> None:
    log.info("Epoch [%d/%d] done: train loss %.4f | val loss %.4f top-1 %.2f%% top-5 %.2f%% | "
             "%s img/s, data wait %s", row["epoch"], epochs, row["train_loss"], row["val_loss"],
             100 * row["val_top1"], 100 * row["val_top5"],
             f"{row['fps']:.1f}" if row["fps"] else "n/a",
             f"{100 * row['data_wait']:.1f}%" if row["data_wait"] is not None else "n/a")
    if "val_ema_top1" in row:
        log.info("Epoch [%d/%d] EMA: val loss %.4f top-1 %.2f%% top-5 %.2f%%", row["epoch"],
                 epochs, row["val_ema_loss"], 100 * row["val_ema_top1"],
                 100 * row["val_ema_top5"])


def attach_all(ctx: RunContext, fps: FpsMeter) -> None:
    """The trainer's own handlers. Their order of registration matters in two places, each
    kept inside one handler: LossTracker stores a step's loss before its reading point reads
    the window (both registered by ``LossTracker.attach``, in that order), and the epoch's end
    is one handler, EpochEnd. ``fps`` is the wiring's: summary.json reads its run figure."""
    trainer, cfg, schedule = ctx.trainer, ctx.cfg, ctx.parts.schedule
    fps.attach(trainer)
    schedule.attach(trainer)
    feed_epochs(trainer, ctx.data.train)
    interval = IntervalLog(lambda: schedule.lr, ctx.global_batch, cfg.epochs,
                           ctx.rt.out / "train_loss.csv", resumed_at=trainer.state.iteration)
    interval.attach(trainer)
    if ctx.parts.step.clip_grad_norm is not None:
        interval.grad_norm = lambda: ctx.step_facts.grad_norm
    if ctx.parts.ema is not None:  # after each step, outside a --graph capture
        ctx.parts.ema.attach(trainer, warn_if_exists=False)
    losses = LossTracker(ctx.rt.device, cfg.print_freq, interval)
    losses.attach(trainer)
    ctx.stop.attach(trainer, every=cfg.print_freq)
    EpochEnd(ctx.parts.model, Scoring(ctx.evaluator, ctx.data.eval_batches,
                                      ctx.data.class_names, ctx.ema_evaluator), ctx.record,
             measures=(losses, fps), epoch_lr=lambda: schedule.epoch_lr).attach(trainer)
