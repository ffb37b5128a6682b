"""One training process, step by step: ``run_training`` reads as the table of contents of a
run; each step is a factory of the module that owns that concern (runtime, pipeline, engine,
checkpoints, handlers, reporting, trackers). ``train`` is what every rank runs.

Spawned ranks unpickle ``train`` from this module, so importing it imports ``distributed``
(and the module it must import before any process group exists) in every child.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import ignite.distributed as idist
import yaml

from ignite_rn50 import (
    checkpoints,
    cli,
    distributed,
    environment,
    events,
    handlers,
    reporting,
    trackers,
)
from ignite_rn50 import device as dev
from ignite_rn50.checkpoints import Checkpoints
from ignite_rn50.config import Config
from ignite_rn50.config_schema import save_config
from ignite_rn50.engine import build_parts, build_trainer, create_evaluator, mix_spec
from ignite_rn50.errors import Diverged, OutOfSpace
from ignite_rn50.loop import Loop
from ignite_rn50.pipeline import build_dataflow
from ignite_rn50.runtime import setup_process
from ignite_rn50.signals import GracefulStop

log = logging.getLogger("ignite_rn50")
PROG = "ignite_rn50"


def run_training(cfg: Config) -> None:
    """One process's run, step by step."""
    stop = GracefulStop()
    stop.install()  # from the start: a Ctrl-C during set-up stops at the first step
    try:
        loop = build_loop(cfg, stop)
        saves = checkpoints.setup_checkpoints(loop)
        checkpoints.resume(loop, saves)
        if loop.rt.is_main:  # once the folder's checkpoints accept this run
            save_config(cfg, loop.rt.out / "config.yaml")
        if loop.trainer.state.iteration >= cfg.epochs * loop.epoch_length:
            log.info("the run in %s is already complete (%d epochs); nothing to do",
                     loop.rt.out, loop.trainer.state.epoch)
            return
        outputs = attach_outputs(loop, saves)
        log_start(loop)
        trackers.attach_progress_bar(cfg.progress_bar, loop.rt.rank, loop.trainer)
        run_until_done(loop, outputs)
    finally:
        stop.uninstall()  # the caller's handlers again, whatever stopped the run


def build_loop(cfg: Config, stop: GracefulStop) -> Loop:
    """Device, data, model and optimiser, the two engines and the run's events."""
    rt = setup_process(cfg)
    data = build_dataflow(cfg, rt.device)
    parts = build_parts(cfg, rt, data.num_classes, len(data.train))
    trainer = build_trainer(parts, rt.device, cfg.graph)
    events.register(trainer)
    evaluator = create_evaluator(parts.model, parts.eval_criterion, rt.device, parts.precision,
                                 parts.memory_format)
    return Loop(cfg, rt, data, parts, trainer, evaluator, stop)


@dataclass
class Outputs:
    """What a run writes and reports besides its log."""

    checkpoints: Checkpoints
    summary: reporting.RunSummary
    tracking: trackers.Tracking


def attach_outputs(loop: Loop, saves: Checkpoints) -> Outputs:
    """The trainer's handlers, then what attaches to the run's events (in any order: see
    events.py): checkpoints, summary.json and the trackers."""
    fps = handlers.attach_all(loop)
    saves.attach(loop.trainer, loop.cfg.save_every_iters)
    summary = reporting.RunSummary.attach(loop, lambda: fps.fps, lambda: saves.best_path)
    return Outputs(saves, summary, start_trackers(loop))


def start_trackers(loop: Loop) -> trackers.Tracking:
    if not loop.rt.is_main:
        return trackers.Tracking()
    cfg = loop.cfg
    ctx = trackers.TrackerContext(
        out=loop.rt.out, environment=loop.rt.environment, config_groups=cfg.groups(),
        config_text=yaml.safe_dump(cfg.as_dict(), sort_keys=False),
        clearml={"mode": cfg.clearml_mode, "project": cfg.clearml_project,
                 "task": cfg.clearml_task, "tags": cfg.clearml_tags},
        gpu_monitor=dev.gpu_monitor_works(loop.rt.device))
    return trackers.start(cfg.loggers, ctx, loop.trainer, loop.evaluator)


def log_start(loop: Loop) -> None:
    cfg = loop.cfg
    if not loop.rt.is_main:
        return
    if loop.trainer.state.epoch == 0:
        params = sum(p.numel() for p in loop.parts.model.parameters())
        log.info("training ResNet-%d (%.2fM parameters) on %s x %d, global batch %d, "
                 "%d iterations/epoch, %s pipeline", cfg.depth, params / 1e6,
                 loop.rt.device, loop.rt.processes, loop.global_batch, loop.epoch_length,
                 loop.data.kind)
    if loop.parts.mix is not None or cfg.label_smoothing:
        log.info("training batches mixed: %s; label smoothing %g. The training loss is against "
                 "these mixed, smoothed targets (no training accuracy is reported); top-1 and "
                 "top-5 are measured on the unmixed test split", mix_spec(cfg).describe(),
                 cfg.label_smoothing)


def run_until_done(loop: Loop, outputs: Outputs) -> None:
    """Train to the last epoch or a signal, then report (whatever happened) and leave."""
    trainer, rt = loop.trainer, loop.rt
    finished = False
    try:
        trainer.run(loop.data.train, max_epochs=loop.cfg.epochs)
        outputs.summary.facts.update(distributed.replica_report(loop.parts.model, rt.device))
        finished = True
    finally:
        loop.stop.uninstall()
        # after a failure, the reports are best effort: a full disk was already said
        with contextlib.suppress(*(() if finished else (OutOfSpace,))):
            finish_reports(loop, outputs)
    if getattr(trainer.state, "stopped_by_signal", None):
        path = outputs.checkpoints.save_mid(trainer, "interrupted")
        if rt.is_main:
            log.info("stopped by %s at epoch %d iteration %d; saved %s. Resume with the same "
                     "command plus --resume auto", trainer.state.stopped_by_signal,
                     trainer.state.epoch, trainer.state.iteration, path)
    if rt.processes > 1:
        idist.barrier()  # leave together: rank 0 may still be writing reports


def finish_reports(loop: Loop, outputs: Outputs) -> None:
    outputs.summary.write(loop.trainer)
    if loop.rt.is_main and loop.record.history:
        reporting.plot_curves(loop.record.history, loop.rt.out / "curves.png")
    outputs.tracking.close(loop.rt.out, outputs.checkpoints.best_path)


def train(local_rank: int, cfg: Config) -> None:
    """Per-process entry (spawned children too); see cli.rank_main for the statuses."""
    try:
        cli.rank_main(PROG, _train_logging_divergence, cfg)
    finally:
        environment.close_logging()


def _train_logging_divergence(cfg: Config) -> None:
    try:
        run_training(cfg)
    except Diverged as exc:
        if idist.get_rank() == 0:
            log.error("error: %s; the checkpoints already written are intact (the last good one "
                      "is in %s); lower --lr or enable a warm-up (--warmup-iters or "
                      "--warmup-epochs), then --resume", exc, cfg.output_dir)
        exc.logged = True
        raise
