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

from ignite_rn50 import events
from ignite_rn50.config.declaration import Config, profile_range
from ignite_rn50.config.parsing import save_config
from ignite_rn50.errors import Diverged, OutOfSpace
from ignite_rn50.model.resnet import count_parameters
from ignite_rn50.outputs import logs, plots, trackers
from ignite_rn50.system import device as dev
from ignite_rn50.system import distributed
from ignite_rn50.system.signals import GracefulStop
from ignite_rn50.training import checkpoints, dashboard, handlers, reports, summary
from ignite_rn50.training.assembly import build_parts
from ignite_rn50.training.checkpoints import Checkpoints
from ignite_rn50.training.context import RunContext
from ignite_rn50.training.dataflow import build_dataflow
from ignite_rn50.training.profiling import StepProfiler
from ignite_rn50.training.runtime import setup_process
from ignite_rn50.training.step import build_trainer, create_evaluator

log = logging.getLogger("ignite_rn50")
PROG = "ignite_rn50"


def run_training(cfg: Config) -> None:
    """One process's run, step by step."""
    stop = GracefulStop()
    stop.install()  # from the start: a Ctrl-C during set-up stops at the first step
    try:
        ctx = build_context(cfg, stop)
        saves = checkpoints.setup_checkpoints(ctx)
        checkpoints.resume(ctx, saves)
        if ctx.rt.is_main:  # once the folder's checkpoints accept this run
            save_config(cfg, ctx.rt.out / "config.yaml")
        if ctx.trainer.state.iteration >= cfg.epochs * ctx.epoch_length:
            log.info("the run in %s is already complete (%d epochs); nothing to do",
                     ctx.rt.out, ctx.trainer.state.epoch)
            return
        outputs = attach_outputs(ctx, saves)
        log_start(ctx)
        trackers.attach_progress_bar(cfg.progress_bar, ctx.rt.rank, ctx.trainer)
        run_until_done(ctx, outputs)
    finally:
        stop.uninstall()  # the caller's handlers again, whatever stopped the run


def build_context(cfg: Config, stop: GracefulStop) -> RunContext:
    """Device, data, model and optimiser, the two engines and the run's events."""
    rt = setup_process(cfg)
    data = build_dataflow(cfg, rt.device, launched_externally=distributed.launched_externally())
    parts = build_parts(cfg, rt, data)
    trainer, step_facts = build_trainer(parts, rt.device, cfg.graph)
    events.register(trainer)
    evaluator = create_evaluator(parts.model, parts.eval_criterion, rt.device, parts.precision,
                                 parts.memory_format, num_classes=data.num_classes)
    ema_evaluator = None if parts.ema is None else create_evaluator(
        parts.ema.ema_model, parts.eval_criterion, rt.device, parts.precision,
        parts.memory_format, num_classes=data.num_classes)
    return RunContext(cfg, rt, data, parts, trainer, evaluator, stop, step_facts,
                      ema_evaluator=ema_evaluator)


@dataclass
class Outputs:
    """What a run writes and reports besides its log."""

    checkpoints: Checkpoints
    summary: summary.RunSummary
    tracking: trackers.Tracking


def attach_outputs(ctx: RunContext, saves: Checkpoints) -> Outputs:
    """The trainer's handlers, then what attaches to the run's events (in any order: see
    events.py): checkpoints, summary.json and the trackers."""
    fps = handlers.FpsMeter(ctx.rt.device)
    handlers.attach_all(ctx, fps)
    if ctx.cfg.profile_steps is not None and ctx.rt.is_main:
        StepProfiler(ctx.rt.device, ctx.rt.out / "profile",
                     profile_range(ctx.cfg.profile_steps)).attach(ctx.trainer)
    saves.attach(ctx.trainer, ctx.cfg.save_every_iters)
    run_summary = summary.RunSummary.attach(ctx, lambda: fps.fps, lambda: saves.best_path)
    return Outputs(saves, run_summary, start_trackers(ctx, saves))


def start_trackers(ctx: RunContext, saves: Checkpoints) -> trackers.Tracking:
    """Rank 0's trackers (ClearML's reports into the task the run's owner opened:
    training/dashboard.py), with what they show besides scalars (reports.py)."""
    if not ctx.rt.is_main:
        return trackers.Tracking()
    cfg = ctx.cfg
    where = trackers.TrackerContext(
        out=ctx.rt.out, environment=ctx.rt.environment,
        clearml={"mode": cfg.clearml_mode, "project": cfg.clearml_project,
                 "task": cfg.clearml_task, "tags": cfg.clearml_tags,
                 "output_uri": cfg.clearml_output_uri},
        gpu_monitor=dev.gpu_monitor_works(ctx.rt.device))
    tracking = trackers.start(cfg.loggers, where, ctx.trainer, ctx.evaluator,
                              ema_evaluator=ctx.ema_evaluator,
                              iter_metrics=trackers.ITER_METRICS + (
                                  ["grad_norm"] if cfg.clip_grad_norm is not None else []))
    reports.attach(ctx, saves, tracking)
    return tracking


def log_start(ctx: RunContext) -> None:
    cfg = ctx.cfg
    if not ctx.rt.is_main:
        return
    if ctx.trainer.state.epoch == 0:
        params = count_parameters(ctx.parts.model)
        log.info("training ResNet-%d (%.2fM parameters) on %s x %d, global batch %d, "
                 "%d iterations/epoch, %d epochs, lr %g, %s pipeline", cfg.depth, params / 1e6,
                 ctx.rt.device, ctx.rt.processes, ctx.global_batch, ctx.epoch_length,
                 cfg.epochs, cfg.lr, ctx.data.kind)
    flops = ctx.flops_per_image
    log.info("model: %.2fM parameters, %.3f GMACs = %.3f GFLOPs per %dx%d image "
             "(torch.utils.flop_counter)", count_parameters(ctx.parts.model) / 1e6,
             flops / 2e9, flops / 1e9, ctx.data.image_size, ctx.data.image_size)
    log_trainer_options(ctx)
    if ctx.parts.mix is not None or cfg.label_smoothing:
        log.info("training batches mixed: %s; label smoothing %g. The training loss is against "
                 "these mixed, smoothed targets (no training accuracy is reported); top-1 and "
                 "top-5 are measured on the unmixed test split",
                 ctx.parts.mix.spec.describe() if ctx.parts.mix else "none",
                 cfg.label_smoothing)


def log_trainer_options(ctx: RunContext) -> None:
    """What --accum-steps, --clip-grad-norm, --ema-momentum and --sync-bn do in this run."""
    cfg = ctx.cfg
    if cfg.accum_steps > 1:
        log.info("gradient accumulation: %d micro-batches of %d per process per optimiser "
                 "step; an iteration is one optimiser step of %d images", cfg.accum_steps,
                 ctx.data.batch_per_process // cfg.accum_steps, ctx.global_batch)
    if cfg.clip_grad_norm is not None:
        log.info("gradient norm clipped to %g (the norm before clipping is logged as "
                 "grad_norm)", cfg.clip_grad_norm)
    if cfg.ema_momentum is not None:
        log.info("EMA of the weights, momentum %g (timm decay %g): scored as val_ema; the best "
                 "checkpoint is chosen by the EMA's top-1", cfg.ema_momentum,
                 1 - cfg.ema_momentum)
    if cfg.sync_bn:
        log.info("SyncBatchNorm: BN statistics over all %d processes", ctx.rt.processes)


def run_until_done(ctx: RunContext, outputs: Outputs) -> None:
    """Train to the last epoch or a signal, then report (whatever happened) and leave."""
    trainer, rt = ctx.trainer, ctx.rt
    finished = False
    try:
        trainer.run(ctx.data.train, max_epochs=ctx.cfg.epochs)
        outputs.summary.facts.update(distributed.replica_report(ctx.parts.model, rt.device))
        finished = True
    finally:
        ctx.stop.uninstall()
        # after a failure, the reports are best effort: a full disk was already said
        with contextlib.suppress(*(() if finished else (OutOfSpace,))):
            finish_reports(ctx, outputs)
    if ctx.stop.stopped_by:
        path = outputs.checkpoints.save_mid(trainer, "interrupted")
        if rt.is_main:
            log.info("stopped %s at epoch %d iteration %d; saved %s. Resume with the same "
                     "command plus --resume auto", ctx.stop.reason,
                     trainer.state.epoch, trainer.state.iteration, path)
    if rt.processes > 1:
        idist.barrier()  # leave together: rank 0 may still be writing reports


def finish_reports(ctx: RunContext, outputs: Outputs) -> None:
    outputs.summary.write(ctx.trainer)
    if ctx.rt.is_main and ctx.record.history:
        plots.plot_curves(ctx.record.history, ctx.rt.out / "curves.png")
    outputs.tracking.close(ctx.rt.out)


def train(local_rank: int, cfg: Config) -> None:
    """Per-process entry (spawned children too); see distributed.rank_main for the statuses."""
    try:
        distributed.rank_main(PROG, _train_logging_divergence, cfg)
    finally:
        logs.close_logging()


def _train_logging_divergence(cfg: Config) -> None:
    cfg = dashboard.rank0_config(cfg)  # torchrun/SLURM: rank 0 read the ClearML dashboard
    try:
        run_training(cfg)
    except Diverged as exc:
        if idist.get_rank() == 0:
            log.error("error: %s; the checkpoints already written are intact (the last good one "
                      "is in %s); lower --lr or enable a warm-up (--warmup-iters or "
                      "--warmup-epochs), then --resume", exc, cfg.output_dir)
        exc.logged = True
        raise
