"""``python -m ignite_rn50.evaluate --checkpoint FILE [run flags]``: top-1, top-5 and loss of
a checkpoint on the test split, on any device and on several processes (``--nproc``), each
test image counted once.

FILE is a checkpoint of this trainer or of the ModelZoo package (mmcls 0.x, see
``weights.py``). The run's data, model and device flags say what to evaluate on
(``--data``, ``--dataset``, ``--depth``, ``--device``, ``--batch-size``, ...), and
``--config`` takes a run's saved ``config.yaml`` as it is: keys that do not concern
evaluation are accepted and unused (nothing is written, no output folder is touched).
The last line on stdout: ``top1=<percent> top5=<percent> loss=<float> images=<count>``.
``--per-class DIR`` also writes ``per_class.csv`` and ``confusion.csv`` there (see
``outputs/perclass.py``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ignite_rn50 import cli
from ignite_rn50.config.declaration import Config
from ignite_rn50.config.parsing import TRAINING_ONLY, build_parser, config_from_args

PROG = "ignite_rn50.evaluate"


@dataclass(frozen=True)
class EvalJob:
    cfg: Config
    checkpoint: Path
    per_class: Path | None = None  # --per-class: where per_class.csv and confusion.csv go
    weights: str | None = None  # --weights: ema, raw, or None = ema where the file has it


def build_eval_parser() -> argparse.ArgumentParser:
    """The trainer's flags (a run's config.yaml applies as it is) plus --checkpoint."""
    parser = build_parser(prog=f"python -m {PROG}", description="Evaluate a checkpoint (ours "
                          "or mmcls 0.x) on the test split.")
    parser.add_argument("--checkpoint", required=True, help="checkpoint file to evaluate")
    parser.add_argument("--per-class", metavar="DIR", help="also write per_class.csv (class,"
                        "index,images,top1) and confusion.csv (true class by row) into DIR")
    cli.add_weights_flag(parser)
    return parser


def parse(argv: list[str] | None) -> EvalJob:
    from ignite_rn50.outputs.perclass import check_folder

    args = vars(build_eval_parser().parse_args(argv))
    checkpoint = cli.existing_file("--checkpoint", args.pop("checkpoint"))
    per_class = args.pop("per_class", None)
    which = args.pop("weights", None)
    cfg = config_from_args(args, fixed=TRAINING_ONLY, base=checkpoint_defaults(checkpoint))
    return EvalJob(cfg, checkpoint, check_folder(Path(per_class)) if per_class else None,
                   which)


def checkpoint_defaults(path: Path) -> dict[str, Any]:
    """The options one of our checkpoints records (dataset, depth, stem; image size and
    normalisation for datasets that resize), taken unless a flag or --config says otherwise:
    evaluate, export and predict need no more than the checkpoint (and the data)."""
    from ignite_rn50.data.registry import DATASETS
    from ignite_rn50.model.weights import read_facts

    facts = read_facts(path)
    out = {k: facts[k] for k in ("dataset", "depth", "stem") if facts.get(k) is not None}
    if out.get("dataset") not in DATASETS:
        return {}
    if DATASETS[out["dataset"]].resizes:
        out["image_size"] = facts["image_size"]
        if facts.get("mean") and facts.get("std"):
            out["mean"], out["std"] = list(facts["mean"]), list(facts["std"])
    return out


def evaluate(local_rank: int, job: EvalJob) -> None:
    """Per-process entry (see distributed.rank_main)."""
    from ignite_rn50.system import distributed

    distributed.rank_main(PROG, evaluate_shard, job)


def evaluate_shard(job: EvalJob) -> None:
    """This process's shard of the test set through the trainer's evaluator."""
    import ignite.distributed as idist
    import torch

    from ignite_rn50.config import specs
    from ignite_rn50.data import pipelines
    from ignite_rn50.system import device as dev
    from ignite_rn50.training.runtime import open_device
    from ignite_rn50.training.step import create_evaluator

    cfg = job.cfg
    device = open_device(cfg)
    precision = specs.precision(cfg, device.type)
    test, model = load_test_and_model(job)
    fmt = dev.memory_format(cfg.channels_last)
    model.to(device, memory_format=fmt)
    rank, world = idist.get_rank(), idist.get_world_size()
    batch = specs.eval_batch_per_process(cfg, world)
    if rank == 0:
        print(f"evaluating {job.checkpoint} on {len(test)} {cfg.dataset} test images, {device} "
              f"x {world}", flush=True)
    batches = pipelines.device_eval_batches(test, device, batch, rank=rank, world_size=world,
                                           channels_last=cfg.channels_last)
    evaluator = create_evaluator(model, torch.nn.CrossEntropyLoss().to(device), device,
                                 precision, fmt, num_classes=test.num_classes)
    evaluator.run(batches)
    images = sum(len(targets) for _, targets in batches)  # what this rank really evaluated
    if world > 1:
        images = int(idist.all_reduce(torch.tensor([float(images)], device=idist.device())))
    m = evaluator.state.metrics
    if rank == 0 and job.per_class is not None:
        from ignite_rn50.outputs import perclass

        files = perclass.write_files(job.per_class, m["confusion"].cpu().tolist(),
                                     test.class_names)
        print(f"per-class results: {files[0]} {files[1]}", flush=True)
    if rank == 0:
        print(f"top1={100 * m['top1']:.4f} top5={100 * m['top5']:.4f} loss={m['loss']:.6f} "
              f"images={images}", flush=True)


@dataclass(frozen=True)
class CheckpointModel:
    """A checkpoint's network with what the file says of its inputs and classes."""

    model: Any
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str]


def model_from_checkpoint(cfg: Config, checkpoint: Path, which: str | None) -> CheckpointModel:
    """The network the file needs (depth, classes, stem) with its weights, and how its images
    were prepared, from nothing but the file: its record first, then the flags, then the
    dataset's own (predict, and export without data)."""
    from ignite_rn50.config.specs import read_options
    from ignite_rn50.data.registry import dataset_spec
    from ignite_rn50.errors import UserError
    from ignite_rn50.model import weights
    from ignite_rn50.model.resnet import build_model, resolve_stem
    from ignite_rn50.outputs.perclass import names_for

    facts = weights.read_facts(checkpoint)
    state, _ = weights.read_state_dict(checkpoint, "--checkpoint", which)
    head = state.get("fc.weight")  # a file without one fails load_into, naming the key
    classes = int(facts.get("num_classes") or (head.shape[0] if head is not None else 100))
    spec = dataset_spec(cfg.dataset)
    size = int(facts.get("image_size") or spec.image_side(read_options(cfg)))
    stats = ((facts.get("mean"), facts.get("std")) if facts.get("mean") else
             (cfg.mean, cfg.std) if cfg.mean else spec.stats)
    if not stats:
        raise UserError(f"--checkpoint {checkpoint} records no normalisation; pass --mean "
                        "and --std (the training split's, 0-255 RGB)")
    model = build_model(cfg.depth, classes, resolve_stem(cfg.stem, size))
    weights.load_into(model, checkpoint, flag="--checkpoint", weights=which)
    return CheckpointModel(model, size, tuple(stats[0]), tuple(stats[1]),
                           names_for(facts.get("class_names"), classes))


def load_test_and_model(job: EvalJob):  # noqa: ANN201 - (ImageSet, nn.Module), torch lazily
    """The test split and the model with the file's weights (a file that does not fit is one
    UserError naming the first mismatching key)."""
    from ignite_rn50.config.specs import read_options
    from ignite_rn50.data.readers import load_test_set
    from ignite_rn50.data.registry import dataset_spec
    from ignite_rn50.model import weights
    from ignite_rn50.model.resnet import build_model, resolve_stem

    cfg = job.cfg
    test = load_test_set(dataset_spec(cfg.dataset), cfg.data, read_options(cfg))
    model = build_model(cfg.depth, test.num_classes, resolve_stem(cfg.stem, test.image_size))
    weights.load_into(model, job.checkpoint, flag="--checkpoint", weights=job.weights)
    return test, model


def launch(job: EvalJob) -> None:
    from ignite_rn50.config import specs
    from ignite_rn50.config.specs import read_options
    from ignite_rn50.data.readers import num_classes
    from ignite_rn50.data.registry import dataset_spec
    from ignite_rn50.model import weights
    from ignite_rn50.model.resnet import build_model, resolve_stem
    from ignite_rn50.system import distributed
    from ignite_rn50.training.runtime import preflight

    cfg = job.cfg
    backend, _ = preflight(cfg, claim_output=False)
    # a file that does not fit stops here, once, before any process starts
    spec, options = dataset_spec(cfg.dataset), read_options(cfg)
    stem = resolve_stem(cfg.stem, spec.image_side(options))
    weights.load_into(build_model(cfg.depth, num_classes(spec, cfg.data, options), stem),
                      job.checkpoint, flag="--checkpoint", weights=job.weights)
    distributed.launch(evaluate, job, specs.topology(cfg, backend))


def main(argv: list[str] | None = None) -> int:
    return cli.main(PROG, parse, launch, argv)


if __name__ == "__main__":
    sys.exit(main())
