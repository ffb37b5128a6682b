"""``python -m ignite_rn50.evaluate --checkpoint FILE [run flags]``: top-1, top-5 and loss of
a checkpoint on the test split, on any device and on several processes (``--nproc``), each
test image counted once.

FILE is a checkpoint of this trainer or of the ModelZoo package (mmcls 0.x, see
``weights.py``). The run's data, model and device flags say what to evaluate on
(``--data``, ``--dataset``, ``--depth``, ``--device``, ``--batch-size``, ...), and
``--config`` takes a run's saved ``config.yaml`` as it is: keys that do not concern
evaluation are accepted and unused (nothing is written, no output folder is touched).
The last line on stdout: ``top1=<percent> top5=<percent> loss=<float> images=<count>``.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")  # torch_npu only when asked for

import ignite.distributed as idist  # noqa: E402
import torch  # noqa: E402

from ignite_rn50 import device as dev  # noqa: E402
from ignite_rn50 import distributed, pipeline, weights  # noqa: E402
from ignite_rn50.config import Config, build_parser, config_from_args  # noqa: E402
from ignite_rn50.data import load_test_set, num_classes  # noqa: E402
from ignite_rn50.engine import create_evaluator  # noqa: E402
from ignite_rn50.errors import EXIT_USAGE, UserError  # noqa: E402
from ignite_rn50.model import build_model  # noqa: E402
from ignite_rn50.runtime import preflight  # noqa: E402


@dataclass(frozen=True)
class EvalJob:
    cfg: Config
    checkpoint: Path


def build_eval_parser() -> argparse.ArgumentParser:
    """The trainer's flags (a run's config.yaml applies as it is) plus --checkpoint."""
    parser = build_parser(prog="python -m ignite_rn50.evaluate")
    parser.description = "Evaluate a checkpoint (ours or mmcls 0.x) on the test split."
    parser.add_argument("--checkpoint", required=True, help="checkpoint file to evaluate")
    return parser


# what only concerns training, set aside so that a run's config.yaml applies as it is
TRAINING_ONLY = {"resume": None, "init_from": None, "graph": False, "compile": False,
                 "amp_backend": "native", "download": False}


def parse(argv: list[str] | None) -> EvalJob:
    args = vars(build_eval_parser().parse_args(argv))
    checkpoint = Path(args.pop("checkpoint")).expanduser()
    return EvalJob(config_from_args(args, fixed=TRAINING_ONLY), checkpoint)


def evaluate(local_rank: int, job: EvalJob) -> None:
    """Per-process entry: a user error in one of several ranks ends it with status 2."""
    try:
        evaluate_shard(job)
    except UserError as exc:
        if idist.get_world_size() == 1:
            raise
        sys.stderr.write(f"ignite_rn50.evaluate: error: {exc}\n")
        distributed.leave_group()
        sys.exit(EXIT_USAGE)
    distributed.release_process_objects()


def evaluate_shard(job: EvalJob) -> None:
    """This process's shard of the test set through the trainer's evaluator."""
    cfg = job.cfg
    device_type = dev.resolve_device_type(cfg.device)
    device = dev.process_device(device_type, cfg.gpu_id)
    dev.configure_backends(device, idist.get_nproc_per_node())
    precision = dev.resolve_precision(device_type, cfg.amp, cfg.amp_dtype, cfg.amp_backend)
    test = load_test_set(cfg.dataset, cfg.data, test_size=cfg.synthetic_test_size,
                         num_classes=cfg.synthetic_classes, image_size=cfg.synthetic_image_size)
    model = build_model(cfg.depth, test.num_classes)
    weights.load_into(model, job.checkpoint, flag="--checkpoint")
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(device, memory_format=fmt)
    rank, world = idist.get_rank(), idist.get_world_size()
    batch = max((cfg.eval_batch_size or cfg.batch_size) // world, 1)
    batches = pipeline.device_eval_batches(test, device, batch, rank=rank, world_size=world,
                                           channels_last=cfg.channels_last)
    evaluator = create_evaluator(model, torch.nn.CrossEntropyLoss().to(device), device,
                                 precision, fmt)
    evaluator.run(batches)
    images = len(range(rank, len(test), world))
    if world > 1:
        images = int(idist.all_reduce(torch.tensor([float(images)], device=idist.device())))
    m = evaluator.state.metrics
    if rank == 0:
        print(f"top1={100 * m['top1']:.4f} top5={100 * m['top5']:.4f} loss={m['loss']:.6f} "
              f"images={images}", flush=True)


def main(argv: list[str] | None = None) -> int:
    try:
        job = parse(argv)
        if not job.checkpoint.is_file():
            raise UserError(f"--checkpoint {job.checkpoint}: no such file; pass an existing "
                            "checkpoint")
        cfg = job.cfg
        backend, _ = preflight(cfg, claim_output=False)
        # a file that does not fit stops here, once, before any process starts
        weights.load_into(build_model(cfg.depth, num_classes(cfg.dataset, cfg.synthetic_classes)),
                          job.checkpoint, flag="--checkpoint")
        distributed.launch(evaluate, job, cfg, backend)
    except UserError as exc:
        sys.stderr.write(f"ignite_rn50.evaluate: error: {exc}\n")
        return EXIT_USAGE
    except torch.multiprocessing.ProcessRaisedException as exc:
        sys.stderr.write(f"ignite_rn50.evaluate: an evaluation process failed:\n{exc}\n")
        return 1
    except torch.multiprocessing.ProcessExitedException as exc:
        return exc.exit_code if exc.exit_code and exc.exit_code > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
