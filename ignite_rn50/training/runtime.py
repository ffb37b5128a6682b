"""What a process is before it trains: checked once before any rank starts (``preflight``),
then set up in every rank (``setup_process``): device, precision, seeds, logging, and the
first lines of the log naming the environment."""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.utils import manual_seed

from ignite_rn50.config import specs
from ignite_rn50.config.declaration import Config
from ignite_rn50.data.readers import locate
from ignite_rn50.data.registry import dataset_spec
from ignite_rn50.errors import UserError
from ignite_rn50.outputs import logs, rundir
from ignite_rn50.system import device as dev
from ignite_rn50.system import distributed
from ignite_rn50.system import precision as prec
from ignite_rn50.training.dataflow import download_once_per_job


@dataclass(frozen=True)
class Runtime:
    """This process's place in the job and what it runs on."""

    rank: int
    processes: int  # in the whole job (torch's world size)
    device: torch.device
    precision: prec.Precision
    out: Path
    environment: dict[str, str]
    started: float

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def owns_output_dir(node_rank: int) -> bool:
    """Global rank 0 under torchrun/SLURM; else the launcher (or process) of node 0."""
    if distributed.launched_externally():
        return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0
    return node_rank == 0


def preflight(cfg: Config, claim_output: bool = True
              ) -> tuple[str | None, rundir.OutputDirLock | None]:
    """Everything that can be checked once, before any rank starts; one clear line on
    failure. Returns the process-group backend (None for one process) and the folder lock,
    which the caller holds until the job ends (None without ``claim_output``)."""
    device_type = dev.resolve_device_type(cfg.device)
    external = distributed.launched_externally()
    multi = cfg.processes > 1 or external
    dev.check_device_count(device_type, cfg.nproc, cfg.gpu_id)
    backend = dev.backend_for(device_type, cfg.backend) if multi else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # each rank warns (in its log) about slow cpu autocast
        precision = specs.precision(cfg, device_type)
    if cfg.graph:
        dev.graph_api(torch.device(device_type), precision)
        if precision.backend == "apex":
            raise UserError("--graph captures native AMP only; apex.amp scales the loss on "
                            "the host: pass --amp-backend native or drop --graph")
    if cfg.compile:
        dev.compile_backend_available(device_type)
    if cfg.sync_bn and not multi:
        raise UserError("--sync-bn synchronises BatchNorm over several processes; this job "
                        "has one: pass --nproc 2 or more, or drop --sync-bn")
    if cfg.deterministic:
        dev.deterministic_environment()  # before any rank starts or a library reads it
    if not external:
        download_once_per_job(cfg, launched_externally=False)  # before any rank reads it
    locate(dataset_spec(cfg.dataset), cfg.data)
    lock = None
    if claim_output and owns_output_dir(cfg.node_rank):
        lock = rundir.claim_output_dir(cfg.output_dir, resuming=cfg.resume is not None)
    if multi and not external:
        if cfg.node_rank == 0:
            distributed.check_port_free(cfg.addr, cfg.port)
        dev.prepare_spawned_ranks(device_type)
    return backend, lock


def open_device(cfg: Config) -> torch.device:
    """This process's device, its backends configured (training, evaluate and export)."""
    device = dev.process_device(dev.resolve_device_type(cfg.device), cfg.gpu_id)
    dev.configure_backends(device, idist.get_nproc_per_node(), cfg.deterministic)
    return device


def setup_process(cfg: Config) -> Runtime:
    """Device, logging (rank 0: console and train.log), seeds, precision; rank 0 opens the
    log with the environment."""
    started = time.perf_counter()
    rank, world = idist.get_rank(), idist.get_world_size()
    device = open_device(cfg)
    out = Path(cfg.output_dir).expanduser().resolve()
    if world > 1:
        idist.barrier()  # the folder's owner created it before the ranks started
    logs.setup_logging(rank, out / rundir.LOG_NAME if rank == 0 else None)
    manual_seed(cfg.seed + rank)
    precision = specs.precision(cfg, device.type)
    env = logs.environment(dev.describe_device(device),
                                idist.backend() if world > 1 else None)
    if rank == 0:
        logs.log_environment(env)
        logs.log.info("precision: %s%s", precision.explain(),
                      "; deterministic algorithms (--deterministic)" if cfg.deterministic else "")
    return Runtime(rank, world, device, precision, out, env, started)
