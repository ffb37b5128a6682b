"""The run's data: a Config and a device in, this process's training and evaluation batches
out (the readers and pipelines of ``data/`` take explicit specs; this is where a run's
configuration meets them)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable

import ignite.distributed as idist
import torch

from ignite_rn50.config import specs
from ignite_rn50.config.declaration import Config, batch_share_problem
from ignite_rn50.data import files, pipelines
from ignite_rn50.data.readers import ensure_files, load_datasets
from ignite_rn50.data.registry import dataset_spec
from ignite_rn50.data.spec import ImageSet
from ignite_rn50.errors import UserError
from ignite_rn50.system import device as dev


@dataclass
class Dataflow:
    """This process's share of the data, ready for the two engines."""

    train: pipelines.TrainData
    eval_batches: Iterable
    num_classes: int
    batch_per_process: int
    kind: str  # "device" or "torchvision"
    class_names: tuple[str, ...] | None = None  # the dataset's, where it names them
    image_size: int = 32  # the side of the images (FLOPs per image)
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # mean, std on 0-255


def download_once_per_job(cfg: Config, *, launched_externally: bool) -> None:
    """--download: the one place it happens. A job this program spawns fetches once, in the
    launcher, before any rank starts (``preflight``); under torchrun/SLURM, where there is no
    such launcher, rank 0 fetches while the others wait (``build_dataflow``)."""
    spec = dataset_spec(cfg.dataset)
    if not (spec.needs_files and cfg.download):
        return
    if launched_externally:
        with idist.one_rank_first():  # rank 0 downloads; the others find it
            ensure_files(spec, cfg.data)
    else:
        ensure_files(spec, cfg.data)


def build_dataflow(cfg: Config, device: torch.device, *, launched_externally: bool) -> Dataflow:
    """Load the dataset, shard it over the ranks and build the input pipeline that fits (see
    ``pipelines.fits_on_device``)."""
    rank, world = idist.get_rank(), idist.get_world_size()
    problem = batch_share_problem(cfg.batch_size, world, "the processes of this job")
    if problem:  # --nproc jobs were checked by the config; torchrun/SLURM ones are here
        raise UserError(problem)
    if launched_externally:
        download_once_per_job(cfg, launched_externally=True)
    train_set, test_set, on_device = read_splits(cfg, device, world)
    batch = cfg.batch_size // world
    eval_batch = specs.eval_batch_per_process(cfg, world)
    shard = dict(rank=rank, world_size=world)
    feed = pipelines.Feed(batch, seed=cfg.seed, max_batches=cfg.max_iters,
                          drop_last=cfg.drop_last, **shard)
    try:
        if on_device:
            train: pipelines.TrainData = pipelines.DeviceTrainData(train_set, device, feed,
                                                                   cfg.channels_last)
            evals: Iterable = pipelines.device_eval_batches(
                test_set, device, eval_batch, channels_last=cfg.channels_last, **shard)
        else:
            pin = dev.pin_memory(device)
            train = pipelines.LoaderTrainData(train_set, feed, num_workers=cfg.num_workers,
                                              pin_memory=pin)
            evals = pipelines.loader_eval_batches(test_set, eval_batch,
                                                  num_workers=cfg.num_workers,
                                                  pin_memory=pin, **shard)
    except ValueError as exc:
        raise UserError(f"{exc}; lower --batch-size or use more data") from None
    return Dataflow(train, evals, test_set.num_classes, batch,
                    "device" if on_device else "torchvision", test_set.class_names,
                    image_size=test_set.image_size, stats=(test_set.mean, test_set.std))


def read_splits(cfg: Config, device: torch.device, world: int
                ) -> tuple[ImageSet, ImageSet, bool]:
    """The training and test splits, and whether the device pipeline takes them (else the
    torchvision one). Image files stay in their files (the torchvision pipeline's workers
    read them) where that pipeline is asked for, or may be chosen by ``auto`` (on a device
    that tells its free memory), and are decoded into memory once the device pipeline is."""
    free = dev.free_memory(device)
    keep_files = cfg.data_pipeline == "torchvision" or (cfg.data_pipeline == "auto" and
                                                        free is not None)
    train, test = load_datasets(dataset_spec(cfg.dataset), cfg.data,
                                specs.read_options(cfg, keep_files=keep_files))
    if cfg.flip is not None:  # the run's word over the dataset's (a folder of digits or text)
        train = replace(train, flip=cfg.flip)
    on_device = cfg.data_pipeline == "device" or (
        cfg.data_pipeline == "auto" and pipelines.fits_on_device(train, test, world, free))
    if on_device:
        train, test = (files.in_memory(split, cfg.num_workers) for split in (train, test))
    return train, test, on_device
