"""One declared configuration: defaults < YAML file < command-line flags, validated once.

Every option is declared exactly once below (type, default, help, choices); the YAML schema,
the argparse flags and ``--help`` are derived from that declaration (``parsing.py``),
so a key that is not declared is an error everywhere and a default can never drift between
two places. The resolved ``Config`` is frozen: nothing changes it at run time.

This module and the registries it reads (datasets, LR policies, trackers) import nothing
heavy: ``--help`` and a mistyped flag answer before torch is loaded.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Callable

from ignite_rn50.data.registry import DATASETS, dataset_spec
from ignite_rn50.errors import UserError
from ignite_rn50.optim.schedule import POLICIES
from ignite_rn50.outputs.trackers import TRACKERS


def _opt(default: Any, help: str, *, choices: tuple | None = None, group: str = "training",
         shows: str | None = None, key: str | None = None) -> Any:
    """``shows``: the default in words, where the value (None) does not say it; ``key``: the
    YAML key and flag name, where the attribute is named otherwise."""
    meta = {"help": help, "choices": choices, "group": group, "shows": shows, "key": key}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class Config:
    """The reference recipe (mmcls resnet50_8xb16_cifar100) is the default of every field."""

    # --- device and precision -------------------------------------------------------------
    device: str = _opt("auto", "training device; auto picks npu > cuda > cpu",
                       choices=("auto", "npu", "cuda", "cpu"), group="device")
    gpu_id: int | None = _opt(None, "device index for single-process runs", group="device",
                              shows="the process's local rank, i.e. card 0 for one process")
    amp: bool | None = _opt(None, "mixed precision", group="device",
                            shows="on for npu/cuda, off for cpu")
    amp_dtype: str = _opt("auto", "autocast dtype; auto = float16 on npu/cuda, bfloat16 on cpu",
                          choices=("auto", "float16", "bfloat16"), group="device")
    amp_backend: str = _opt("native", "AMP implementation: native = torch.autocast + "
                            "GradScaler; apex = apex.amp; auto = apex where it imports on an "
                            "NPU (the ModelZoo package's setting), else native",
                            choices=("native", "apex", "auto"), group="device")
    opt_level: str = _opt("O2", "apex.amp opt level (when apex runs)",
                          choices=("O1", "O2"), group="device")
    loss_scale: float | None = _opt(None, "static loss scale (e.g. 1024): kept through "
                                    "overflows, whose steps are skipped, as apex's static scale",
                                    group="device", shows="dynamic")
    channels_last: bool = _opt(False, "channels_last memory format", group="device")
    compile: bool = _opt(False, "torch.compile the model (torchair's backend on npu)",
                         group="device")
    graph: bool = _opt(False, "run the whole train step as one captured device graph (cuda: "
                       "CUDA graphs; npu: torch_npu's graph capture where it has one)",
                       group="device")

    # --- distributed ----------------------------------------------------------------------
    nproc: int = _opt(1, "processes per node (one per device)", group="distributed")
    nodes: int = _opt(1, "number of nodes (the ModelZoo package's meaning of --world-size)",
                      group="distributed", key="world_size")
    node_rank: int = _opt(0, "rank of this node among --world-size nodes", group="distributed")
    addr: str = _opt("127.0.0.1", "master address (node 0's host name or IP)",
                     group="distributed")
    port: int = _opt(29500, "master port on --addr", group="distributed")
    backend: str | None = _opt(None, "process-group backend", group="distributed",
                               choices=(None, "hccl", "nccl", "gloo"),
                               shows="follows the device: npu->hccl, cuda->nccl, cpu->gloo")
    dist_timeout: int = _opt(600, "seconds a collective may wait before the job fails",
                             group="distributed")

    # --- data -----------------------------------------------------------------------------
    dataset: str = _opt("cifar100", "dataset", choices=tuple(DATASETS), group="data")
    data: str | None = _opt(None, "the dataset's folder or its parent (cifar-100-python, ...; "
                            "folder: DIR with train/<class>/ and val/<class>/)", group="data")
    download: bool = _opt(False, "download the dataset into --data if it is missing",
                          group="data")
    data_pipeline: str = _opt("auto", "input pipeline: device = augment batched tensors on "
                              "the training device; torchvision = DataLoader + PIL transforms; "
                              "auto = device when the data takes under a quarter of the "
                              "free device memory",
                              choices=("auto", "device", "torchvision"), group="data")
    num_workers: int = _opt(4, "DataLoader workers per process (torchvision pipeline)",
                            group="data")
    drop_last: bool = _opt(True, "drop each epoch's last partial training batch; "
                           "--no-drop-last trains on it, as mmcls does", group="data")
    synthetic_train_size: int = _opt(5000, "images in the synthetic training set", group="data")
    synthetic_test_size: int = _opt(1000, "images in the synthetic test set", group="data")
    synthetic_classes: int = _opt(100, "classes in the synthetic dataset", group="data")
    synthetic_image_size: int = _opt(32, "side of the synthetic images in pixels", group="data")
    image_size: int = _opt(32, "folder: resize + centre crop to this side, at load", group="data")
    mean: list[float] = _opt([], "folder: R G B mean, 0-255", group="data", shows="train split's")
    std: list[float] = _opt([], "folder: R G B std, 0-255", group="data", shows="the train split's")
    flip: bool | None = _opt(None, "mirror training images at p 0.5; --no-flip: never (digits, "
                             "text)", group="data", shows="the dataset's: yes for all built in")

    # --- model and optimisation -----------------------------------------------------------
    depth: int = _opt(50, "ResNet depth", choices=(18, 34, 50, 101, 152), group="model")
    stem: str = _opt("auto", "cifar = 3x3 conv, no max-pool; imagenet = 7x7/2 conv + max-pool; auto"
                     " = cifar up to 64 px", choices=("auto", "cifar", "imagenet"), group="model")
    batch_size: int = _opt(128, "GLOBAL batch size, split evenly over all processes")
    eval_batch_size: int | None = _opt(None, "global evaluation batch size",
                                       shows="--batch-size")
    lr: float = _opt(0.1, "initial learning rate")
    momentum: float = _opt(0.9, "SGD momentum")
    weight_decay: float = _opt(5e-4, "SGD weight decay")
    nesterov: bool = _opt(False, "Nesterov momentum")
    epochs: int = _opt(200, "training epochs")
    lr_policy: str = _opt("step", "per-epoch lr policy: " + "; ".join(
        f"{name} = {policy.help}" for name, policy in POLICIES.items()), choices=tuple(POLICIES))
    lr_milestones: list[int] = _opt([60, 120, 160], "epochs at which lr is multiplied by "
                                    "--lr-gamma (step policy)")
    lr_gamma: float = _opt(0.2, "lr decay factor at each milestone (step policy)")
    min_lr: float = _opt(0.0, "lr reached at the end of the run (cosine policy)")
    warmup_iters: int = _opt(0, "linear lr warm-up over this many iterations (0 = none)")
    warmup_epochs: float = _opt(0.0, "linear lr warm-up over this many epochs' iterations "
                                "(mmcv's warmup_by_epoch; may outlast the run; 0 = none)")
    warmup_factor: float = _opt(0.1, "lr factor at the first warm-up iteration (mmcv's "
                                "warmup_ratio)")
    mixup_alpha: float = _opt(0.0, "mixup of training batches: lam ~ Beta(a, a) (mmcls "
                              "BatchMixup; 0 = off)")
    mixup_prob: float | None = _opt(None, "share of training batches mixup mixes",
                                    shows="1 when it is the only mix, 0.5 with cutmix")
    cutmix_alpha: float = _opt(0.0, "cutmix of training batches: lam ~ Beta(a, a) (mmcls "
                               "BatchCutMix; 0 = off)")
    cutmix_prob: float | None = _opt(None, "share of training batches cutmix mixes",
                                     shows="1 when it is the only mix, 0.5 with mixup")
    label_smoothing: float = _opt(0.0, "training targets y(1 - e) + e/classes (mmcls "
                                  "LabelSmoothLoss 'original'; 0 = off)")
    max_iters: int | None = _opt(None, "cap on iterations per epoch (performance runs)")
    seed: int = _opt(0, "random seed (each process uses seed + global rank)")
    ema_momentum: float | None = _opt(None, "EMA of the weights, ema = (1-M) ema + M w per "
                                      "step (mmcls EMAHook's momentum, e.g. 2e-4 = timm decay "
                                      "0.9998); scored as val_ema, picks the best checkpoint",
                                      shows="off")
    clip_grad_norm: float | None = _opt(None, "clip the gradient norm to this bound after "
                                        "unscaling (mmcv grad_clip max_norm, timm --clip-grad)",
                                        shows="off")
    accum_steps: int = _opt(1, "micro-batches per optimiser step (the global batch is "
                            "per-step batch x processes x N; iterations count steps)")
    deterministic: bool = _opt(False, "deterministic kernels (cudnn, torch, HCCL)", group="device")
    sync_bn: bool = _opt(False, "SyncBatchNorm over all processes (needs several)",
                         group="distributed")

    # --- output, checkpoints, logging -----------------------------------------------------
    output_dir: str = _opt("runs/resnet50_cifar100", "where checkpoints, logs, summary.json "
                           "and curves.png go", group="output")
    resume: str | None = _opt(None, "checkpoint file to resume from, or 'auto' for the newest "
                              "in --output-dir", group="output")
    init_from: str | None = _opt(None, "start a new run from this file's model weights (ours "
                                 "or an mmcls 0.x checkpoint); optimizer, schedule and epoch "
                                 "start fresh. A checkpoint that --resume continues wins",
                                 group="model")
    keep_checkpoints: int = _opt(2, "how many of the latest epoch checkpoints to keep (the "
                                 "best is kept as well)", group="output")
    save_every_iters: int | None = _opt(None, "also save every N iterations within an epoch "
                                        "(one such file is kept; the next epoch checkpoint "
                                        "replaces it)", group="output", shows="only at epoch "
                                        "ends")
    print_freq: int = _opt(50, "log one line every N iterations", group="output")
    profile_steps: str | None = _opt(None, "profile training iterations A:B into "
                                     "<output-dir>/profile", group="output", shows="off")
    progress_bar: str = _opt("auto", "tqdm progress bar; auto = when stderr is a terminal",
                             choices=("auto", "on", "off"), group="output")
    loggers: list[str] = _opt(list(TRACKERS), "experiment loggers: any of "
                              f"{', '.join(TRACKERS)} (empty list = none)", group="output")
    clearml_mode: str = _opt("auto", "auto = online when a ClearML server is configured, "
                             "else offline", choices=("auto", "online", "offline", "off"),
                             group="output")
    clearml_project: str = _opt("ignite_rn50", "ClearML project name", group="output")
    clearml_task: str | None = _opt(None, "ClearML task name", group="output",
                                    shows="the output folder's name")
    clearml_tags: list[str] = _opt([], "ClearML tags", group="output")
    clearml_queue: str | None = _opt(None, "create the ClearML task, then enqueue it in this "
                                     "queue for a clearml-agent and end here (needs a server)",
                                     group="output", shows="run here")
    clearml_output_uri: str | None = _opt(None, "where the task's models are uploaded (a "
                                          "storage URL; true = the ClearML file server)",
                                          group="output", shows="as clearml.conf says")

    # ------------------------------------------------------------------------------------
    @property
    def processes(self) -> int:
        """Processes in the whole job (nodes x processes per node)."""
        return self.nproc * self.nodes

    def as_dict(self) -> dict[str, Any]:
        """In the YAML schema's keys (``world_size`` for ``nodes``)."""
        return {key_of(name): getattr(self, name) for name in FIELDS}

    def groups(self) -> dict[str, dict[str, Any]]:
        """The config in its declared sections (for grouped hyperparameters on dashboards)."""
        out: dict[str, dict[str, Any]] = {}
        for name, field in FIELDS.items():
            out.setdefault(field.metadata["group"], {})[key_of(name)] = getattr(self, name)
        return out


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def key_of(name: str) -> str:
    """The YAML key (and, with dashes, the flag) of a field."""
    return FIELDS[name].metadata["key"] or name


def flag(name: str) -> str:
    return "--" + key_of(name).replace("_", "-")


def default_of(name: str) -> Any:
    field = FIELDS[name]
    return field.default if field.default is not dataclasses.MISSING else field.default_factory()


def batch_share_problem(batch_size: int, processes: int, how: str) -> str | None:
    """Why the global --batch-size cannot be split over ``processes`` (``how``: what made them,
    in words), or None: the one rule, checked by the config for --nproc jobs and by the
    dataflow for torchrun/SLURM ones, whose size only the process group knows."""
    if batch_size % processes == 0:
        return None
    return (f"--batch-size {batch_size} is global and must divide evenly over {processes} "
            f"processes ({how}); use a multiple of {processes}")


# --- value checks -------------------------------------------------------------------------------

Need = Callable[[bool, str], None]


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise UserError(msg)


SEED_MAX = 2**31 - 1  # numpy takes seed + rank below 2**32: room for any number of ranks
DIST_TIMEOUT_MAX = 30 * 24 * 3600  # seconds; timedelta and c10d overflow far above


def _is_float_option(name: str) -> bool:
    tp = typing.get_type_hints(Config)[name]
    return tp is float or float in typing.get_args(tp) or tp == list[float]


FLOAT_OPTIONS = tuple(name for name in FIELDS if _is_float_option(name))


def validate(cfg: Config, data_optional: bool = False) -> None:
    """Value checks that a type cannot express; each message names the option and the fix.
    One rule first: every number option is finite (a NaN or inf fails no ``>`` check
    reliably: inf passes ``> 0``, NaN fails every comparison with the wrong message)."""
    for name in FLOAT_OPTIONS:
        value = getattr(cfg, name)
        values = value if isinstance(value, list) else [value]  # lists of numbers too
        _need(all(v is None or math.isfinite(v) for v in values),
              f"{flag(name)} must be a finite number, got {value}")
    for name, field in FIELDS.items():
        choices = field.metadata["choices"]
        value = getattr(cfg, name)
        _need(choices is None or value in choices,
              f"{flag(name)} must be one of {', '.join(str(c) for c in choices or ())}, "
              f"got {value!r}")
    _validate_optimisation(cfg, _need)
    _validate_trainer_options(cfg, _need)
    _validate_job(cfg, _need)
    _validate_data(cfg, _need, data_optional)


def _validate_optimisation(cfg: Config, need: Need) -> None:
    need(cfg.batch_size > 0, f"--batch-size must be positive, got {cfg.batch_size}")
    need(cfg.eval_batch_size is None or cfg.eval_batch_size > 0,
         f"--eval-batch-size must be positive, got {cfg.eval_batch_size}")
    need(cfg.epochs > 0, f"--epochs must be positive, got {cfg.epochs}")
    need(cfg.lr > 0, f"--lr must be positive, got {cfg.lr}")
    need(cfg.momentum >= 0, f"--momentum must be >= 0, got {cfg.momentum}")
    need(cfg.weight_decay >= 0, f"--weight-decay must be >= 0, got {cfg.weight_decay}")
    need(0 < cfg.lr_gamma <= 1, f"--lr-gamma must be in (0, 1], got {cfg.lr_gamma}")
    need(0 <= cfg.min_lr < cfg.lr, f"--min-lr must be in [0, --lr), got {cfg.min_lr}")
    need(all(m > 0 for m in cfg.lr_milestones) and cfg.lr_milestones == sorted(cfg.lr_milestones),
         f"--lr-milestones must be increasing positive epochs, got {cfg.lr_milestones}")
    need(cfg.warmup_iters >= 0, f"--warmup-iters must be >= 0, got {cfg.warmup_iters}")
    need(cfg.warmup_epochs >= 0, f"--warmup-epochs must be >= 0, got {cfg.warmup_epochs}")
    need(not (cfg.warmup_iters and cfg.warmup_epochs), "--warmup-iters and --warmup-epochs "
         "both set a warm-up; pass one of them")
    need(0 < cfg.warmup_factor <= 1, f"--warmup-factor must be in (0, 1], got "
         f"{cfg.warmup_factor}")
    need(cfg.max_iters is None or cfg.max_iters > 0,
         f"--max-iters must be positive, got {cfg.max_iters}")
    need(0 <= cfg.seed <= SEED_MAX, f"--seed must be in 0..{SEED_MAX}, got {cfg.seed}")
    need(cfg.loss_scale is None or cfg.loss_scale > 0,
         f"--loss-scale must be positive or 'dynamic', got {cfg.loss_scale}")
    _validate_mixing(cfg, need)


def _validate_mixing(cfg: Config, need: Need) -> None:
    for name in ("mixup", "cutmix"):
        alpha, prob = getattr(cfg, f"{name}_alpha"), getattr(cfg, f"{name}_prob")
        need(alpha >= 0, f"--{name}-alpha must be >= 0, got {alpha}")
        need(prob is None or 0 <= prob <= 1, f"--{name}-prob must be in [0, 1], got {prob}")
        need(not (prob and not alpha), f"--{name}-prob {prob} needs --{name}-alpha > 0")
    probs = [p for p in (cfg.mixup_prob, cfg.cutmix_prob) if p is not None]
    need(sum(probs) <= 1 + 1e-9, f"--mixup-prob and --cutmix-prob share the batches and must "
         f"sum to at most 1, got {' + '.join(f'{p:g}' for p in probs)}")
    need(0 <= cfg.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got "
         f"{cfg.label_smoothing}")


def profile_range(text: str) -> tuple[int, int]:
    """--profile-steps A:B as (A, B), 1 <= A <= B; a UserError names the fix otherwise."""
    first, sep, last = text.partition(":")
    try:
        a, b = int(first), int(last)
    except ValueError:
        a = b = 0
    if not sep or not 1 <= a <= b:
        raise UserError(f"--profile-steps must be A:B with 1 <= A <= B (training iterations, "
                        f"e.g. 10:15), got {text!r}")
    return a, b


def _validate_trainer_options(cfg: Config, need: Need) -> None:
    """EMA, clipping, accumulation and profiling (issue 27's options)."""
    need(cfg.ema_momentum is None or 0 < cfg.ema_momentum < 1,
         f"--ema-momentum must be in (0, 1) (mmcls's convention: 0.0002 is timm's decay "
         f"0.9998), got {cfg.ema_momentum}")
    need(cfg.clip_grad_norm is None or cfg.clip_grad_norm > 0,
         f"--clip-grad-norm must be positive, got {cfg.clip_grad_norm}")
    need(cfg.accum_steps >= 1, f"--accum-steps must be >= 1, got {cfg.accum_steps}")
    share = cfg.batch_size // cfg.processes
    need(share % cfg.accum_steps == 0, f"--batch-size {cfg.batch_size} gives {share} images "
         f"per process, which {cfg.accum_steps} micro-batches (--accum-steps) do not divide; "
         f"use a multiple of {cfg.processes * cfg.accum_steps}")
    for name, used in (("accum_steps", cfg.accum_steps > 1),
                       ("clip_grad_norm", cfg.clip_grad_norm is not None)):
        need(not (cfg.graph and used), f"--graph captures one plain step; {flag(name)} is not "
             f"captured: drop {flag(name)} or --graph")
    if cfg.profile_steps is not None:
        profile_range(cfg.profile_steps)


def _validate_job(cfg: Config, need: Need) -> None:
    """Processes, nodes, devices and outputs, and the options that exclude each other."""
    need(cfg.nproc > 0, f"--nproc must be positive, got {cfg.nproc}")
    need(cfg.nodes > 0, f"--world-size (nodes) must be positive, got {cfg.nodes}")
    need(0 <= cfg.node_rank < cfg.nodes,
         f"--node-rank must be in 0..{cfg.nodes - 1} for --world-size {cfg.nodes}, "
         f"got {cfg.node_rank}")
    need(0 < cfg.port < 65536, f"--port must be in 1..65535, got {cfg.port}")
    need(0 < cfg.dist_timeout <= DIST_TIMEOUT_MAX, f"--dist-timeout must be in "
         f"1..{DIST_TIMEOUT_MAX} seconds (30 days), got {cfg.dist_timeout}")
    need(cfg.gpu_id is None or cfg.gpu_id >= 0, f"--gpu-id must be >= 0, got {cfg.gpu_id}")
    need(cfg.print_freq > 0, f"--print-freq must be positive, got {cfg.print_freq}")
    need(cfg.keep_checkpoints > 0, f"--keep-checkpoints must be positive, got "
         f"{cfg.keep_checkpoints}")
    need(cfg.save_every_iters is None or cfg.save_every_iters > 0,
         f"--save-every-iters must be positive, got {cfg.save_every_iters}")
    need(not (cfg.clearml_queue and ("clearml" not in cfg.loggers or cfg.clearml_mode in (
        "off", "offline"))), f"--clearml-queue {cfg.clearml_queue} enqueues a ClearML task: it "
        "needs clearml in --loggers and --clearml-mode auto or online")
    unknown = [name for name in cfg.loggers if name not in TRACKERS]
    need(not unknown, f"--loggers accepts {', '.join(TRACKERS)}, got {', '.join(unknown)}")
    need(not batch_share_problem(cfg.batch_size, cfg.processes,
                                 f"--nproc {cfg.nproc} x --world-size {cfg.nodes}"),
         batch_share_problem(cfg.batch_size, cfg.processes,
                             f"--nproc {cfg.nproc} x --world-size {cfg.nodes}") or "")
    need(not (cfg.graph and cfg.processes > 1),
         "--graph with several processes is not supported yet (DDP's gradient all-reduce is "
         "not captured); drop --graph or run one process")
    need(not (cfg.graph and cfg.compile), "--graph and --compile each build their own device "
         "graphs; pass one of them")
    need(not (cfg.graph and not cfg.drop_last), "--graph captures one batch shape; a last "
         "partial batch (--no-drop-last) would need another: drop one of them")


def _validate_data(cfg: Config, need: Need, data_optional: bool) -> None:
    need(cfg.num_workers >= 0, f"--num-workers must be >= 0, got {cfg.num_workers}")
    need(cfg.synthetic_classes >= 2, f"--synthetic-classes must be >= 2, got "
         f"{cfg.synthetic_classes}")
    need(cfg.synthetic_train_size > 0 and cfg.synthetic_test_size > 0,
         "--synthetic-train-size and --synthetic-test-size must be positive")
    need(cfg.synthetic_image_size >= 8, f"--synthetic-image-size {cfg.synthetic_image_size} < 8")
    spec = dataset_spec(cfg.dataset)
    own = [flag(n) for n in ("image_size", "mean", "std") if getattr(cfg, n) != default_of(n)]
    problem = spec.options_problem(cfg.image_size, cfg.mean, cfg.std, own)
    need(problem is None, problem or "")
    if spec.needs_files and cfg.data is None and not data_optional:
        fetch = spec.download
        need(not cfg.download or fetch is None, f"--download needs --data, the folder to "
             f"download {spec.title} into (it then holds {fetch and fetch.folder}/)")
        need(False, f"--data is required for --dataset {cfg.dataset}: pass "
             f"{spec.data_help}{' (add --download to fetch it there)' if fetch else ''}, or "
             "--dataset synthetic for a demo")
    need(not cfg.download or spec.download or not spec.needs_files,  # synthetic: nothing to get
         f"--download: {spec.title} has no download; drop it")
