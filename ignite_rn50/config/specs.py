"""A Config turned into each room's own small spec: the one place where the rooms below
config (data, optim, system) get their settings from a run's configuration.

The rooms take their specs, not a Config (config sits above them: it lists their registries'
entries as choices), so these adapters cannot live beside the specs they build, as timm keeps
``scheduler_kwargs(cfg)`` beside ``create_scheduler_v2``; they live here, together, instead.
"""

from __future__ import annotations

from ignite_rn50.config.declaration import Config
from ignite_rn50.data.mixing import MixSpec
from ignite_rn50.data.spec import ReadOptions, SyntheticSizes
from ignite_rn50.optim.schedule import ScheduleSpec
from ignite_rn50.system import precision as prec
from ignite_rn50.system.distributed import Topology


def synthetic_sizes(cfg: Config) -> SyntheticSizes:
    return SyntheticSizes(cfg.synthetic_train_size, cfg.synthetic_test_size,
                          cfg.synthetic_classes, cfg.synthetic_image_size)


def read_options(cfg: Config, keep_files: bool = False) -> ReadOptions:
    """keep_files: image files may stay in their files (for the torchvision pipeline)."""
    return ReadOptions(synthetic=synthetic_sizes(cfg), image_size=cfg.image_size,
                       mean=tuple(cfg.mean) if cfg.mean else None,  # type: ignore[arg-type]
                       std=tuple(cfg.std) if cfg.std else None,  # type: ignore[arg-type]
                       workers=cfg.num_workers, keep_files=keep_files)


def schedule_spec(cfg: Config, epoch_length: int) -> ScheduleSpec:
    """--warmup-epochs counts iterations of this run's epochs (mmcv's warmup_by_epoch)."""
    warmup = cfg.warmup_iters or round(cfg.warmup_epochs * epoch_length)
    return ScheduleSpec(lr=cfg.lr, policy=cfg.lr_policy, milestones=tuple(cfg.lr_milestones),
                        gamma=cfg.lr_gamma, min_lr=cfg.min_lr, epochs=cfg.epochs,
                        warmup_iters=warmup, warmup_factor=cfg.warmup_factor)


def mix_spec(cfg: Config) -> MixSpec:
    return MixSpec.resolve(cfg.mixup_alpha, cfg.mixup_prob, cfg.cutmix_alpha, cfg.cutmix_prob)


def eval_batch_per_process(cfg: Config, processes: int) -> int:
    """--eval-batch-size (default: --batch-size) is global, as --batch-size is; each process
    scores its share of the test images in batches of its share of it, at least 1."""
    return max((cfg.eval_batch_size or cfg.batch_size) // processes, 1)


def topology(cfg: Config, backend: str | None) -> Topology:
    return Topology(cfg.nproc, cfg.nodes, cfg.node_rank, cfg.addr, cfg.port, cfg.dist_timeout,
                    backend)


def precision(cfg: Config, device_type: str) -> prec.Precision:
    """What mixed precision the run gets on ``device_type``: the one place it is resolved
    (preflight, every rank, evaluate and export alike)."""
    return prec.resolve_precision(device_type, cfg.amp, cfg.amp_dtype, cfg.amp_backend,
                                  cfg.loss_scale, cfg.opt_level)
