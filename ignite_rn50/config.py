"""One declared configuration: defaults < YAML file < command-line flags, validated once.

Every option is declared exactly once below (type, default, help, choices); the YAML schema,
the argparse flags and ``--help`` are all derived from that declaration, so a key that is
not declared is an error everywhere and a default can never drift between two places.
The resolved ``Config`` is frozen: nothing changes it at run time.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Callable, Union

import yaml

from ignite_rn50.errors import UserError


def _opt(default: Any, help: str, *, choices: tuple | None = None,
         group: str = "training") -> Any:
    meta = {"help": help, "choices": choices, "group": group}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class Config:
    """The reference recipe (mmcls resnet50_8xb16_cifar100) is the default of every field."""

    # --- device and precision -------------------------------------------------------------
    device: str = _opt("auto", "training device; auto picks npu > cuda > cpu",
                       choices=("auto", "npu", "cuda", "cpu"), group="device")
    gpu_id: int | None = _opt(None, "device index for single-process runs (default: the "
                              "process's local rank, i.e. card 0 for one process)", group="device")
    amp: bool | None = _opt(None, "mixed precision; default: on for npu/cuda, off for cpu",
                            group="device")
    amp_dtype: str = _opt("auto", "autocast dtype; auto = float16 on npu/cuda, bfloat16 on cpu",
                          choices=("auto", "float16", "bfloat16"), group="device")
    amp_backend: str = _opt("native", "AMP implementation: native = torch.autocast + "
                            "GradScaler; apex = apex.amp; auto = apex where it imports on an "
                            "NPU (the seed's setting), else native",
                            choices=("native", "apex", "auto"), group="device")
    opt_level: str = _opt("O2", "apex.amp opt level (when apex runs)",
                          choices=("O1", "O2"), group="device")
    loss_scale: float | None = _opt(None, "static loss scale (e.g. 1024); default: dynamic",
                                    group="device")
    channels_last: bool = _opt(False, "use channels_last memory format for model and inputs",
                               group="device")
    compile: bool = _opt(False, "torch.compile the model (torchair's backend on npu)",
                         group="device")
    graph: bool = _opt(False, "run the whole train step as one captured device graph (cuda: "
                       "CUDA graphs; npu: torch_npu's graph capture where it has one)",
                       group="device")

    # --- distributed ----------------------------------------------------------------------
    nproc: int = _opt(1, "processes per node (one per device)", group="distributed")
    world_size: int = _opt(1, "number of nodes (the seed's meaning of --world-size)",
                           group="distributed")
    node_rank: int = _opt(0, "rank of this node among --world-size nodes", group="distributed")
    addr: str = _opt("127.0.0.1", "master address (node 0's host name or IP)",
                     group="distributed")
    port: int = _opt(29500, "master port on --addr", group="distributed")
    backend: str | None = _opt(None, "process-group backend; default follows the device: "
                               "npu->hccl, cuda->nccl, cpu->gloo",
                               choices=(None, "hccl", "nccl", "gloo"), group="distributed")
    dist_timeout: int = _opt(600, "seconds a collective may wait before the job fails",
                             group="distributed")

    # --- data -----------------------------------------------------------------------------
    dataset: str = _opt("cifar100", "dataset", choices=("cifar100", "synthetic"), group="data")
    data: str | None = _opt(None, "folder cifar-100-python or its parent", group="data")
    download: bool = _opt(False, "download CIFAR-100 into --data if it is missing",
                          group="data")
    data_pipeline: str = _opt("auto", "input pipeline: device = augment batched tensors on "
                              "the training device; torchvision = DataLoader + PIL transforms; "
                              "auto = device when the data takes under a quarter of the "
                              "free device memory",
                              choices=("auto", "device", "torchvision"), group="data")
    num_workers: int = _opt(4, "DataLoader workers per process (torchvision pipeline)",
                            group="data")
    synthetic_train_size: int = _opt(5000, "images in the synthetic training set", group="data")
    synthetic_test_size: int = _opt(1000, "images in the synthetic test set", group="data")
    synthetic_classes: int = _opt(100, "classes in the synthetic dataset", group="data")
    synthetic_image_size: int = _opt(32, "side of the synthetic images in pixels", group="data")

    # --- model and optimisation -----------------------------------------------------------
    depth: int = _opt(50, "ResNet depth", choices=(18, 34, 50, 101, 152), group="model")
    batch_size: int = _opt(128, "GLOBAL batch size, split evenly over all processes")
    eval_batch_size: int | None = _opt(None, "global evaluation batch size (default: "
                                       "--batch-size)")
    lr: float = _opt(0.1, "initial learning rate")
    momentum: float = _opt(0.9, "SGD momentum")
    weight_decay: float = _opt(5e-4, "SGD weight decay")
    nesterov: bool = _opt(False, "Nesterov momentum")
    epochs: int = _opt(200, "training epochs")
    lr_policy: str = _opt("step", "per-epoch lr policy: step = x --lr-gamma at each "
                          "--lr-milestones epoch; cosine = cosine annealing from --lr to "
                          "--min-lr over --epochs", choices=("step", "cosine"))
    lr_milestones: list[int] = _opt([60, 120, 160], "epochs at which lr is multiplied by "
                                    "--lr-gamma (step policy)")
    lr_gamma: float = _opt(0.2, "lr decay factor at each milestone (step policy)")
    min_lr: float = _opt(0.0, "lr reached at the end of the run (cosine policy)")
    warmup_iters: int = _opt(0, "linear lr warm-up over this many iterations (0 = none)")
    warmup_factor: float = _opt(0.1, "lr factor at the first warm-up iteration")
    max_iters: int | None = _opt(None, "cap on iterations per epoch (performance runs)")
    seed: int = _opt(0, "random seed (each process uses seed + global rank)")

    # --- output, checkpoints, logging -----------------------------------------------------
    output_dir: str = _opt("runs/resnet50_cifar100", "where checkpoints, logs, summary.json "
                           "and curves.png go", group="output")
    resume: str | None = _opt(None, "checkpoint file to resume from, or 'auto' for the newest "
                              "in --output-dir", group="output")
    init_from: str | None = _opt(None, "start a new run from this file's model weights (ours "
                                 "or an mmcls 0.x checkpoint); optimizer, schedule and epoch "
                                 "start fresh. A checkpoint that --resume continues wins",
                                 group="model")
    keep_checkpoints: int = _opt(2, "how many of the latest checkpoints to keep (the best is "
                                 "kept as well)", group="output")
    print_freq: int = _opt(50, "log one line every N iterations", group="output")
    progress_bar: str = _opt("auto", "tqdm progress bar; auto = when stderr is a terminal",
                             choices=("auto", "on", "off"), group="output")
    loggers: list[str] = _opt(["tensorboard", "clearml"], "experiment loggers: any of "
                              "tensorboard, clearml (empty list = none)", group="output")
    clearml_mode: str = _opt("auto", "auto = online when a ClearML server is configured, "
                             "else offline", choices=("auto", "online", "offline", "off"),
                             group="output")
    clearml_project: str = _opt("ignite_rn50", "ClearML project name", group="output")
    clearml_task: str | None = _opt(None, "ClearML task name (default: the output folder "
                                    "name)", group="output")
    clearml_tags: list[str] = _opt([], "ClearML tags", group="output")

    # ------------------------------------------------------------------------------------
    @property
    def processes(self) -> int:
        return self.nproc * self.world_size

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def groups(self) -> dict[str, dict[str, Any]]:
        """The config in its declared sections (for grouped hyperparameters on dashboards)."""
        out: dict[str, dict[str, Any]] = {}
        for f in dataclasses.fields(self):
            out.setdefault(f.metadata["group"], {})[f.name] = getattr(self, f.name)
        return out


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


# --- types ----------------------------------------------------------------------------------

def _type_of(name: str) -> Any:
    return typing.get_type_hints(Config)[name]


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_describe(typing.get_args(tp)[0])}"
    return {type(None): "null", int: "integer", float: "number", bool: "true/false",
            str: "string"}.get(tp, str(tp))


def _check_type(value: Any, tp: Any) -> tuple[bool, Any]:
    """(ok, value coerced); int is accepted for float, bool is never an int."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, coerced = _check_type(value, arg)
            if ok:
                return True, coerced
        return False, value
    if origin is list:
        if not isinstance(value, list):
            return False, value
        items = [_check_type(v, typing.get_args(tp)[0]) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if tp is str:
        return isinstance(value, str), value
    raise TypeError(f"unsupported config type {tp}")


# --- YAML -------------------------------------------------------------------------------------

def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; pass an existing YAML file to "
                        "--config (see configs/)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"config file {path} is not valid YAML ({first}); fix the file") from None
    if not isinstance(raw, dict):
        raise UserError(f"config file {path} must hold a mapping of option: value")
    values = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in FIELDS:
            raise UserError(f"unknown key '{key}' in config file {path}; valid keys: "
                            f"{', '.join(FIELDS)}")
        ok, coerced = _check_type(value, _type_of(name))
        if not ok:
            raise UserError(f"key '{key}' in config file {path} must be "
                            f"{_describe(_type_of(name))}, got {value!r}")
        values[name] = coerced
    return values


# --- command line ---------------------------------------------------------------------------

def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_scalar(tp: Any):
    """argparse type= callable for one (optional) scalar type."""
    args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    base = args[0]

    def parse(text: str):
        if type(None) in typing.get_args(tp) and text.lower() in ("none", "null", "dynamic"):
            return None
        try:
            return base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {_describe(base)}, got {text!r}") from None

    parse.__name__ = _describe(base)
    return parse


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line and exit 2 (its default), without usage."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(prog: str = "python -m ignite_rn50.run") -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description="ResNet on CIFAR-100 with PyTorch-Ignite "
                     "(npu, cuda or cpu; one process, many, or many nodes).",
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                     argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", help="YAML file of options (flags override it)")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, field in FIELDS.items():
        meta = field.metadata
        group = groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        default = field.default if field.default is not dataclasses.MISSING \
            else field.default_factory()
        tp = _type_of(name)
        help_text = f"{meta['help']} (default: {default})"
        base_types = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        if base_types[0] is bool:
            group.add_argument(_flag(name), dest=name, action=argparse.BooleanOptionalAction,
                               help=help_text)
        elif typing.get_origin(tp) is list:
            item = typing.get_args(tp)[0]
            group.add_argument(_flag(name), dest=name, nargs="*", type=_parse_scalar(item),
                               metavar=_describe(item).upper(), help=help_text)
        else:
            choices = meta["choices"]
            group.add_argument(_flag(name), dest=name, type=_parse_scalar(tp),
                               choices=choices, metavar=None if choices is None else
                               "{" + ",".join(str(c) for c in choices if c is not None) + "}",
                               help=help_text)
    return parser


def _validate(cfg: Config) -> None:
    """Value checks that a type cannot express; each message names the option and the fix."""
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise UserError(msg)

    for name, field in FIELDS.items():
        choices = field.metadata["choices"]
        value = getattr(cfg, name)
        need(choices is None or value in choices,
             f"{_flag(name)} must be one of {', '.join(str(c) for c in choices or ())}, "
             f"got {value!r}")
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
    need(0 < cfg.warmup_factor <= 1, f"--warmup-factor must be in (0, 1], got "
         f"{cfg.warmup_factor}")
    need(cfg.max_iters is None or cfg.max_iters > 0,
         f"--max-iters must be positive, got {cfg.max_iters}")
    _validate_job(cfg, need)


def _validate_job(cfg: Config, need: Callable[[bool, str], None]) -> None:
    """Processes, nodes, devices, data and outputs, and the options that exclude each other."""
    need(cfg.nproc > 0, f"--nproc must be positive, got {cfg.nproc}")
    need(cfg.world_size > 0, f"--world-size must be positive, got {cfg.world_size}")
    need(0 <= cfg.node_rank < cfg.world_size,
         f"--node-rank must be in 0..{cfg.world_size - 1} for --world-size {cfg.world_size}, "
         f"got {cfg.node_rank}")
    need(0 < cfg.port < 65536, f"--port must be in 1..65535, got {cfg.port}")
    need(cfg.dist_timeout > 0, f"--dist-timeout must be positive, got {cfg.dist_timeout}")
    need(cfg.gpu_id is None or cfg.gpu_id >= 0, f"--gpu-id must be >= 0, got {cfg.gpu_id}")
    need(cfg.loss_scale is None or cfg.loss_scale > 0,
         f"--loss-scale must be positive or 'dynamic', got {cfg.loss_scale}")
    need(cfg.num_workers >= 0, f"--num-workers must be >= 0, got {cfg.num_workers}")
    need(cfg.print_freq > 0, f"--print-freq must be positive, got {cfg.print_freq}")
    need(cfg.keep_checkpoints > 0, f"--keep-checkpoints must be positive, got "
         f"{cfg.keep_checkpoints}")
    need(cfg.synthetic_classes >= 2, f"--synthetic-classes must be >= 2, got "
         f"{cfg.synthetic_classes}")
    need(cfg.synthetic_train_size > 0 and cfg.synthetic_test_size > 0,
         "--synthetic-train-size and --synthetic-test-size must be positive")
    need(cfg.synthetic_image_size >= 8, f"--synthetic-image-size must be >= 8, got "
         f"{cfg.synthetic_image_size}")
    bad_loggers = set(cfg.loggers) - {"tensorboard", "clearml"}
    need(not bad_loggers, f"--loggers accepts tensorboard and clearml, got "
         f"{', '.join(sorted(bad_loggers))}")
    need(cfg.batch_size % cfg.processes == 0,
         f"--batch-size {cfg.batch_size} is global and must divide evenly over "
         f"{cfg.processes} processes (--nproc {cfg.nproc} x --world-size {cfg.world_size}); "
         f"use a multiple of {cfg.processes}")
    need(not (cfg.graph and cfg.processes > 1),
         "--graph with several processes is not supported yet (DDP's gradient all-reduce is "
         "not captured); drop --graph or run one process")
    need(not (cfg.graph and cfg.compile), "--graph and --compile each build their own device "
         "graphs; pass one of them")
    need(cfg.dataset == "synthetic" or cfg.data is not None or cfg.download,
         "--data is required for --dataset cifar100: pass the cifar-100-python folder or its "
         "parent (or --dataset synthetic for a demo)")


def make_config(values: dict[str, Any]) -> Config:
    cfg = Config(**values)
    _validate(cfg)
    return cfg


def config_from_args(args: dict[str, Any], fixed: dict[str, Any] | None = None) -> Config:
    """Parsed flags (argparse's dict, unset flags absent) over the --config file over the
    declared defaults; ``fixed`` values over all three."""
    args = dict(args)
    values = load_yaml(args.pop("config")) if "config" in args else {}
    values.update(args)
    values.update(fixed or {})
    return make_config(values)


def parse_config(argv: list[str] | None = None) -> Config:
    return config_from_args(vars(build_parser().parse_args(argv)))


def save_config(cfg: Config, path: Path) -> None:
    """The resolved config, in the same YAML schema: rerunnable with --config."""
    path.write_text(yaml.safe_dump(cfg.as_dict(), sort_keys=False))
