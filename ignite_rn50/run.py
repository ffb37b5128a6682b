"""Command line entry point: ``python -m ignite_rn50.run [--config FILE] [flags]``.

This module only wires. ``main`` checks once and launches; every process then runs
``run_training``, which reads as the table of contents of a run: each step is a factory of
its own module (runtime, pipeline, engine, handlers, reporting, trackers).
"""

from __future__ import annotations

import logging
import os
import sys
import time

os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")  # torch_npu only when asked for

import ignite.distributed as idist  # noqa: E402
import torch  # noqa: E402
from ignite.engine import Engine, Events  # noqa: E402

from ignite_rn50 import distributed, handlers, pipeline, reporting, trackers  # noqa: E402
from ignite_rn50.config import Config, parse_config  # noqa: E402
from ignite_rn50.engine import Parts, build_parts, build_trainer, create_evaluator  # noqa: E402
from ignite_rn50.errors import EXIT_USAGE, UserError  # noqa: E402
from ignite_rn50.model import count_parameters  # noqa: E402
from ignite_rn50.runtime import Runtime, preflight, setup_process  # noqa: E402

log = logging.getLogger("ignite_rn50")
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130


def run_training(cfg: Config) -> None:
    """One process's run, step by step."""
    stop = handlers.GracefulStop()
    stop.install()  # from the start: a Ctrl-C during set-up stops at the first step
    rt = setup_process(cfg)
    data = pipeline.build_dataflow(cfg, rt.device)
    parts = build_parts(cfg, rt, data.num_classes)
    trainer = build_trainer(parts, rt.device, cfg.graph)
    evaluator = create_evaluator(parts.model, parts.criterion, rt.device, parts.precision,
                                 parts.memory_format)
    record = reporting.RunRecord()
    checkpoints = handlers.setup_checkpoints(parts, trainer, evaluator, record,
                                             data.num_classes, rt.out, cfg.keep_checkpoints)
    handlers.resume(cfg.resume, checkpoints, trainer, len(data.train))
    if trainer.state.iteration >= cfg.epochs * len(data.train):
        log.info("the run in %s is already complete (%d epochs); nothing to do", rt.out,
                 trainer.state.epoch)
        return
    fps = handlers.attach_all(
        trainer, evaluator, parts, data.train, data.eval_batches, record, stop,
        device=rt.device, batch=data.batch_per_process, print_freq=cfg.print_freq,
        epochs=cfg.epochs, loss_file=rt.out / "train_loss.csv")
    trainer.add_event_handler(Events.EPOCH_COMPLETED, checkpoints.save_epoch)
    summary = reporting.RunSummary(rt.out / "summary.json", summary_facts(cfg, rt, parts, data),
                                   record, lambda: fps.fps,
                                   lambda: checkpoints.best_path, rt.started)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, summary.write)
    tracking = trackers.start(cfg, rt, trainer, evaluator)
    if rt.is_main and trainer.state.epoch == 0:
        log.info("training ResNet-%d (%.2fM parameters) on %s x %d, global batch %d, "
                 "%d iterations/epoch, %s pipeline", cfg.depth,
                 count_parameters(parts.model) / 1e6, rt.device, rt.world_size,
                 data.batch_per_process * rt.world_size, len(data.train), data.kind)
    trackers.attach_progress_bar(cfg.progress_bar, rt.rank, trainer)
    run_until_done(trainer, data.train, cfg.epochs, stop, summary, tracking, checkpoints,
                   parts, rt)


def summary_facts(cfg: Config, rt: Runtime, parts: Parts, data: pipeline.Dataflow) -> dict:
    """What summary.json says of the run itself (measurements are added as it goes)."""
    return {"world_size": rt.world_size, "global_batch_size": data.batch_per_process *
            rt.world_size, "device": str(rt.device), "device_type": rt.device.type,
            "amp": parts.precision.describe(), "precision": parts.precision.explain(),
            "optimizer": type(parts.optimizer).__name__, "depth": cfg.depth,
            "dataset": cfg.dataset, "parameters": count_parameters(parts.model),
            "epochs": cfg.epochs, "lr": cfg.lr, "lr_policy": cfg.lr_policy,
            "input_pipeline": data.kind, "graph": cfg.graph}


def run_until_done(trainer: Engine, train_data: pipeline.TrainData, epochs: int,
                   stop: handlers.GracefulStop, summary: reporting.RunSummary,
                   tracking: trackers.Tracking, checkpoints: handlers.Checkpoints,
                   parts: Parts, rt: Runtime) -> None:
    """Train to the last epoch or a signal, then report (whatever happened) and leave."""
    try:
        trainer.run(train_data, max_epochs=epochs)
        summary.facts.update(distributed.replica_report(parts.model, rt.device))
    finally:
        stop.uninstall()
        summary.write(trainer)
        if rt.is_main and summary.record.history:
            reporting.plot_curves(summary.record.history, rt.out / "curves.png")
        tracking.close(rt.out, checkpoints.best_path)
    if getattr(trainer.state, "stopped_by_signal", None):
        path = checkpoints.save_interrupted(trainer)
        if rt.is_main:
            log.info("stopped by %s at epoch %d iteration %d; saved %s. Resume with the same "
                     "command plus --resume auto", trainer.state.stopped_by_signal,
                     trainer.state.epoch, trainer.state.iteration, path)
    if rt.world_size > 1:
        idist.barrier()  # leave together: rank 0 may still be writing reports


# --- one process, and the entry point --------------------------------------------------------

def train(local_rank: int, cfg: Config) -> None:
    """Per-process entry (spawned children too). User errors end the process with status 2,
    divergence with 3, a second Ctrl-C with 130; the process group is freed on every path."""
    status = 0
    try:
        run_training(cfg)
    except UserError as exc:
        if idist.get_world_size() == 1:
            raise
        status = EXIT_USAGE
        # one line per job: the same mistake usually stops every rank, and the launcher ends
        # the others as soon as one exits; a rank that failed alone still says why
        if idist.get_rank() != 0:
            time.sleep(2)
        sys.stderr.write(f"ignite_rn50: error: {exc}\n")
    except handlers.Diverged as exc:
        status = EXIT_DIVERGED
        if idist.get_rank() == 0:
            log.error("error: %s; the checkpoints already written are intact (the last good one "
                      "is in %s); lower --lr or enable --warmup-iters, then --resume", exc,
                      cfg.output_dir)
    except KeyboardInterrupt:
        if idist.get_world_size() == 1:
            raise
        status = EXIT_INTERRUPTED  # torch's spawn wrapper would report a Ctrl-C as success
    finally:
        distributed.release_process_objects()
    if status:
        distributed.leave_group()
        sys.exit(status)


def main(argv: list[str] | None = None) -> int:
    lock = None
    try:
        cfg = parse_config(argv)
        backend, lock = preflight(cfg)
        distributed.launch(train, cfg, cfg, backend)
    except UserError as exc:
        sys.stderr.write(f"ignite_rn50: error: {exc}\n")
        return EXIT_USAGE
    except torch.multiprocessing.ProcessRaisedException as exc:
        sys.stderr.write(f"ignite_rn50: a training process failed:\n{exc}\n")
        return 1
    except torch.multiprocessing.ProcessExitedException as exc:
        return _rank_exit_status(exc.exit_code, exc.error_index)
    except KeyboardInterrupt:
        sys.stderr.write("ignite_rn50: interrupted\n")
        return EXIT_INTERRUPTED
    finally:
        if lock is not None:
            lock.release()
    return 0


def _rank_exit_status(code: int | None, index: int) -> int:
    """The job's status from the rank that ended it; ranks that said why are not repeated."""
    if code == EXIT_INTERRUPTED:
        sys.stderr.write("ignite_rn50: interrupted\n")
    elif code not in (EXIT_USAGE, EXIT_DIVERGED):
        sys.stderr.write(f"ignite_rn50: error: training process {index} exited with status "
                         f"{code}; the job was stopped\n")
    return code if code and code > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
