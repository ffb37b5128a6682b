"""Command line entry point: ``python -m ignite_rn50.run [--config FILE] [flags]``.

This module only wires: config -> checks -> launch -> per-process ``train`` assembling the
device, data, model, engines and handlers built by the other modules.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")  # torch_npu only when asked for

import ignite.distributed as idist  # noqa: E402
import torch  # noqa: E402
from ignite.engine import Engine, Events  # noqa: E402
from ignite.utils import manual_seed  # noqa: E402
from torch import nn  # noqa: E402

from ignite_rn50 import device as dev  # noqa: E402
from ignite_rn50 import distributed, handlers, pipeline, reporting, trackers  # noqa: E402
from ignite_rn50.config import Config, parse_config, save_config  # noqa: E402
from ignite_rn50.data import ensure_cifar, load_datasets, locate_cifar  # noqa: E402
from ignite_rn50.engine import create_evaluator, create_trainer, make_train_step  # noqa: E402
from ignite_rn50.errors import EXIT_USAGE, UserError  # noqa: E402
from ignite_rn50.model import build_model, count_parameters  # noqa: E402

log = logging.getLogger("ignite_rn50")
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130


# --- checks before any process starts -------------------------------------------------------

def prepare_output_dir(cfg: Config) -> Path:
    out = Path(cfg.output_dir).expanduser().resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"--output-dir {out} is not writable ({exc.strerror}); pass a writable "
                        "folder") from None
    if cfg.resume is None and any(out.glob("*.pt")):
        raise UserError(f"--output-dir {out} already holds checkpoints of another run; add "
                        "--resume auto to continue it, or pass a new --output-dir")
    return out


def preflight(cfg: Config) -> tuple[str, str | None]:
    """Everything that can be checked once, before spawning: one clear line on failure."""
    device_type = dev.resolve_device_type(cfg.device)
    multi = cfg.processes > 1 or distributed.launched_externally()
    dev.check_device_count(device_type, cfg.nproc, cfg.gpu_id)
    backend = dev.backend_for(device_type, cfg.backend) if multi else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dev.resolve_precision(device_type, cfg.amp, cfg.amp_dtype, cfg.amp_backend)
    if cfg.dataset == "cifar100":
        if cfg.download and not distributed.launched_externally():
            ensure_cifar(cfg.data)  # here, once, before any rank reads it
        locate_cifar(cfg.data)
    if int(os.environ.get("RANK", "0")) == 0:
        prepare_output_dir(cfg)
    if multi and not distributed.launched_externally():
        if cfg.node_rank == 0:
            distributed.check_port_free(cfg.addr, cfg.port)
        if device_type == "cpu":
            dev.hide_gpus_from_cpu_ranks()
    return device_type, backend


# --- one process ----------------------------------------------------------------------------

def train(local_rank: int, cfg: Config) -> None:
    """Per-process entry (spawned children too): user errors end this process with status 2."""
    try:
        run_training(local_rank, cfg)
    except UserError as exc:
        if idist.get_world_size() == 1:
            raise
        # one line per job: the same mistake usually stops every rank, and the launcher
        # ends the others as soon as one exits; a rank that failed alone still says why
        if idist.get_rank() != 0:
            time.sleep(2)
        sys.stderr.write(f"ignite_rn50: error: {exc}\n")
        sys.exit(EXIT_USAGE)
    except handlers.Diverged as exc:
        if idist.get_rank() == 0:
            log.error("error: %s; the checkpoints already written are intact (the last good one "
                      "is in %s); lower --lr or enable --warmup-iters, then --resume", exc,
                      cfg.output_dir)
        sys.exit(EXIT_DIVERGED)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)  # torch's spawn wrapper would report a Ctrl-C as success


def run_training(local_rank: int, cfg: Config) -> None:
    started = time.perf_counter()
    rank, world = idist.get_rank(), idist.get_world_size()
    device_type = dev.resolve_device_type(cfg.device)
    if world > 1:
        device = idist.device() if device_type != "cpu" else torch.device("cpu")
    else:
        device = dev.select_device(device_type, cfg.gpu_id if cfg.gpu_id is not None else 0)
    dev.configure_backends(device, idist.get_nproc_per_node())
    out = Path(cfg.output_dir).expanduser().resolve()
    if world > 1:
        idist.barrier()
    reporting.setup_logging(rank, out / "train.log" if rank == 0 else None)
    manual_seed(cfg.seed + rank)
    precision = dev.resolve_precision(device_type, cfg.amp, cfg.amp_dtype, cfg.amp_backend)
    if rank == 0:
        save_config(cfg, out / "config.yaml")

    # data
    if cfg.dataset == "cifar100" and cfg.download and rank == 0:
        ensure_cifar(cfg.data)  # under torchrun/SLURM; spawned runs fetched it in preflight
    if world > 1:
        idist.barrier()
    train_set, test_set = load_datasets(
        cfg.dataset, cfg.data, False, train_size=cfg.synthetic_train_size,
        test_size=cfg.synthetic_test_size, num_classes=cfg.synthetic_classes,
        image_size=cfg.synthetic_image_size)
    if cfg.batch_size % world:  # --nproc runs were checked by the config; torchrun is here
        raise UserError(f"--batch-size {cfg.batch_size} is global and must divide evenly over "
                        f"the {world} processes of this job; use a multiple of {world}")
    batch = cfg.batch_size // world
    eval_batch = max((cfg.eval_batch_size or cfg.batch_size) // world, 1)
    use_device_pipeline = cfg.data_pipeline == "device" or (
        cfg.data_pipeline == "auto" and pipeline.fits_on_device(train_set, test_set, world,
                                                                dev.free_memory(device)))
    train_data: pipeline.TrainData
    try:
        if use_device_pipeline:
            train_data = pipeline.DeviceTrainData(
                train_set, device, batch, rank=rank, world_size=world, seed=cfg.seed,
                max_batches=cfg.max_iters, channels_last=cfg.channels_last)
            eval_data = pipeline.device_eval_batches(test_set, device, eval_batch, rank=rank,
                                                     world_size=world,
                                                     channels_last=cfg.channels_last)
        else:
            train_data = pipeline.LoaderTrainData(
                train_set, batch, rank=rank, world_size=world, seed=cfg.seed,
                num_workers=cfg.num_workers, pin_memory=dev.pin_memory(device),
                max_batches=cfg.max_iters)
            eval_data = pipeline.loader_eval_batches(
                test_set, eval_batch, rank=rank, world_size=world, num_workers=cfg.num_workers,
                pin_memory=dev.pin_memory(device))
    except ValueError as exc:
        raise UserError(f"{exc}; lower --batch-size or use more data") from None
    del train_set

    # model, optimiser, precision
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = build_model(cfg.depth, test_set.num_classes).to(device, memory_format=memory_format)
    optimizer = dev.make_optimizer(model.parameters(), device, precision, lr=cfg.lr,
                                   momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                   nesterov=cfg.nesterov)
    if precision.backend == "apex":
        model, optimizer = dev.apex_initialize(model, optimizer, device, cfg.opt_level,
                                               cfg.loss_scale)
    scaler = dev.make_grad_scaler(device, precision, cfg.loss_scale)
    net: nn.Module = model
    if world > 1:
        ddp_kwargs = {}
        if idist.backend() == "hccl":
            ddp_kwargs["broadcast_buffers"] = False  # the seed's HCCL setting
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch renames that keyword
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type != "cpu" else None,
                **ddp_kwargs)
    if cfg.compile:
        net = torch.compile(net)
    criterion = nn.CrossEntropyLoss().to(device)

    trainer = create_trainer(make_train_step(net, optimizer, criterion, device, precision,
                                             scaler, memory_format))
    evaluator = create_evaluator(model, criterion, device, precision, memory_format)
    schedule = handlers.LrSchedule(optimizer, cfg.lr_milestones, cfg.lr_gamma,
                                   cfg.warmup_iters, cfg.warmup_factor)
    record = reporting.RunRecord()
    identity = handlers.RunIdentity({"depth": cfg.depth, "num_classes": test_set.num_classes,
                                     "optimizer": type(optimizer).__name__,
                                     "amp": precision.describe()})
    to_save = {"model": model, "optimizer": optimizer, "lr_scheduler": schedule,
               "trainer": trainer, "record": record, "identity": identity}
    if scaler is not None:
        to_save["scaler"] = scaler
    if precision.backend == "apex":
        to_save["amp"] = dev.apex_state()
    checkpoints = handlers.Checkpoints(to_save, out, cfg.keep_checkpoints,
                                       top1=lambda: evaluator.state.metrics["top1"])

    if cfg.resume is not None:
        path = handlers.find_latest_checkpoint(out) if cfg.resume == "auto" else Path(cfg.resume)
        if path is None:
            log.info("--resume auto: no checkpoint in %s yet, starting from scratch", out)
        else:
            handlers.restore(to_save, handlers.load_checkpoint(path), path)
            if trainer.state.epoch_length != len(train_data):
                raise UserError(
                    f"--resume {path} was written with {trainer.state.epoch_length} iterations "
                    f"per epoch, this run has {len(train_data)} (batch size, processes, "
                    "--max-iters or data differ); resume with the options of that run")
            checkpoints.forget_after(trainer.state.epoch, trainer.state.iteration)
            log.info("resumed from %s (epoch %d, iteration %d)", path, trainer.state.epoch,
                     trainer.state.iteration)
            if trainer.state.iteration >= cfg.epochs * len(train_data):
                log.info("the run in %s is already complete (%d epochs); nothing to do", out,
                         trainer.state.epoch)
                return

    # handlers, in the order they must run at each event
    fps = handlers.FpsMeter(device, batch)
    fps.attach(trainer)
    schedule.attach(trainer)
    stop = handlers.GracefulStop()
    epoch_length = len(train_data)

    since = {"time": time.perf_counter(), "iteration": 0}  # start of the current log interval

    def print_line(engine: Engine, loss: float) -> None:
        # the loss was just read from the device, so the clock below is synchronised
        now = time.perf_counter()
        images = (engine.state.iteration - since["iteration"]) * batch * world
        rate = images / max(now - since["time"], 1e-9)
        since.update(time=now, iteration=engine.state.iteration)
        engine.state.metrics.update(loss=loss, lr=schedule.lr)
        if rank == 0:
            step = (engine.state.iteration - 1) % epoch_length + 1
            log.info("Epoch [%d/%d] Iter [%d/%d] loss %.4f lr %.6f %.1f img/s",
                     engine.state.epoch, cfg.epochs, step, epoch_length, loss, schedule.lr, rate)

    losses = handlers.LossTracker(device, cfg.print_freq, print_line)
    losses.attach(trainer)
    stop.attach(trainer, every=cfg.print_freq)

    epoch_lr = {"value": schedule.lr}

    @trainer.on(Events.EPOCH_STARTED)
    def start_epoch(engine: Engine) -> None:
        start = engine.state.iteration % epoch_length if engine.state.iteration else 0
        train_data.set_epoch(engine.state.epoch, start_batch=start)
        since.update(time=time.perf_counter(), iteration=engine.state.iteration)
        epoch_lr["value"] = schedule.lr  # the decay at epoch end must not relabel this epoch

    @trainer.on(Events.EPOCH_COMPLETED)
    def end_epoch(engine: Engine) -> None:
        losses.epoch_completed(engine)
        handlers.check_finite_weights(model, engine)
        if world > 1:
            sync_buffers(model)
        eval_started = time.perf_counter()
        evaluator.run(eval_data)
        metrics = evaluator.state.metrics
        row = {"epoch": engine.state.epoch, "train_loss": losses.epoch_loss,
               "val_loss": metrics["loss"], "val_top1": metrics["top1"],
               "val_top5": metrics["top5"], "lr": epoch_lr["value"], "fps": fps.epoch_fps,
               "data_wait": fps.epoch_data_wait,
               "eval_seconds": time.perf_counter() - eval_started}
        record.add(row)
        engine.state.metrics.update(epoch_loss=losses.epoch_loss, fps=fps.epoch_fps or 0.0,
                                    data_wait=fps.epoch_data_wait or 0.0)
        if rank == 0:
            log.info("Epoch [%d/%d] done: train loss %.4f | val loss %.4f top-1 %.2f%% top-5 "
                     "%.2f%% | %s img/s, data wait %s", engine.state.epoch, cfg.epochs,
                     row["train_loss"], row["val_loss"], 100 * row["val_top1"],
                     100 * row["val_top5"], f"{row['fps']:.1f}" if row["fps"] else "n/a",
                     f"{100 * row['data_wait']:.1f}%" if row["data_wait"] is not None
                     else "n/a")

    # lr decay (registered above in schedule.attach) runs before the checkpoint below:
    # the saved scheduler already holds the next epoch's lr.
    trainer.add_event_handler(Events.EPOCH_COMPLETED, checkpoints.save_epoch)

    summary_base = {"world_size": world, "global_batch_size": batch * world,
                    "device": str(device), "device_type": device.type,
                    "amp": precision.describe(), "depth": cfg.depth,
                    "dataset": cfg.dataset, "parameters": count_parameters(model)}

    def write_summary(engine: Engine) -> None:
        if rank != 0:
            return
        history = record.history
        last = history[-1] if history else {}
        reporting.write_json_atomic(out / "summary.json", {
            **summary_base,
            "fps": fps.fps, "data_wait_share": last.get("data_wait"),
            "best_top1": record.best_top1, "final_top1": last.get("val_top1"),
            "final_top5": last.get("val_top5"), "final_loss": last.get("train_loss"),
            "final_val_loss": last.get("val_loss"),
            "epochs_completed": last.get("epoch", 0), "epochs": cfg.epochs,
            "iterations": engine.state.iteration,
            "step_dtype": str(getattr(engine.state, "step_dtype", None)),
            "step_device": str(getattr(engine.state, "step_device", None)),
            "best_checkpoint": str(checkpoints.best_path) if checkpoints.best_path else None,
            "e2e_seconds": time.perf_counter() - started,
            "history": history})

    trainer.add_event_handler(Events.EPOCH_COMPLETED, write_summary)
    tracking = trackers.start(cfg, rank, out, trainer, evaluator)
    if rank == 0 and trainer.state.epoch == 0:
        log.info("training ResNet-%d (%.2fM parameters) on %s x %d, %s, global batch %d, "
                 "%d iterations/epoch, %s pipeline", cfg.depth, count_parameters(model) / 1e6,
                 device, world, precision.describe(), batch * world, epoch_length,
                 "device" if use_device_pipeline else "torchvision")
    trackers.attach_progress_bar(cfg.progress_bar, rank, trainer)

    stop.install()
    try:
        trainer.run(train_data, max_epochs=cfg.epochs)
        summary_base.update(replica_report(model, device))
    finally:
        stop.uninstall()
        if rank == 0:
            write_summary(trainer)
            if record.history:
                reporting.plot_curves(record.history, out / "curves.png")
        tracking.close(out, checkpoints.best_path)

    if getattr(trainer.state, "stopped_by_signal", None):
        path = checkpoints.save_interrupted(trainer)
        if rank == 0:
            log.info("stopped by %s at epoch %d iteration %d; saved %s. Resume with the same "
                     "command plus --resume auto", trainer.state.stopped_by_signal,
                     trainer.state.epoch, trainer.state.iteration, path)
    if world > 1:
        # leave together: a rank that tears its process group down while rank 0 is still
        # writing reports was seen to abort once in gloo's threads ("terminate called")
        idist.barrier()


@torch.no_grad()
def replica_report(model: nn.Module, device: torch.device) -> dict:
    """What each rank really ran on, and a weight checksum per replica (equal when DDP kept
    the replicas in step); two collectives at the end of a run."""
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()
    # float32 on the wire: HCCL's all_gather does not take float64 on every Ascend chip
    sums = idist.all_gather(checksum.reshape(1).float().to(idist.device()))
    devices = idist.all_gather(str(device))
    return {"backend": idist.backend(), "rank_devices": devices if isinstance(devices, list)
            else [devices], "replica_checksums": [float(v) for v in sums.cpu().tolist()]}


@torch.no_grad()
def sync_buffers(model: nn.Module) -> None:
    """BN running stats from rank 0 everywhere: HCCL runs DDP with broadcast_buffers=False,
    and evaluation shards must all use the statistics that the checkpoint will hold."""
    for buf in model.buffers():
        if buf.is_floating_point():
            buf.copy_(idist.broadcast(buf, src=0))


# --- entry point --------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_config(argv)
        device_type, backend = preflight(cfg)
        distributed.launch(train, cfg, backend=backend, nproc=cfg.nproc,
                           nnodes=cfg.world_size, node_rank=cfg.node_rank, addr=cfg.addr,
                           port=cfg.port, timeout_s=cfg.dist_timeout)
    except UserError as exc:
        sys.stderr.write(f"ignite_rn50: error: {exc}\n")
        return EXIT_USAGE
    except torch.multiprocessing.ProcessRaisedException as exc:
        sys.stderr.write(f"ignite_rn50: a training process failed:\n{exc}\n")
        return 1
    except torch.multiprocessing.ProcessExitedException as exc:
        if exc.exit_code not in (EXIT_USAGE, EXIT_DIVERGED):  # those ranks said why already
            sys.stderr.write(f"ignite_rn50: error: training process {exc.error_index} exited "
                             f"with status {exc.exit_code}; the job was stopped\n")
        return exc.exit_code if exc.exit_code and exc.exit_code > 0 else 1
    except KeyboardInterrupt:
        sys.stderr.write("ignite_rn50: interrupted\n")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
