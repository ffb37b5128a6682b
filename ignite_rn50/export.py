"""``python -m ignite_rn50.export --checkpoint FILE --output model.onnx [run flags]``: the
trained model as ONNX for deployment, checked by onnxruntime before it is kept.

FILE is a checkpoint of this trainer or of the ModelZoo package (mmcls 0.x, fp16 from apex O2
included; weights are cast to fp32). The model flags (``--depth``, ``--dataset``, or a run's
``--config``) say which model it is, as for ``evaluate``; one of our checkpoints says it
itself. The file is written beside OUTPUT under a temporary name, checked (onnxruntime on
the CPU against PyTorch: on the test split's first images where there is data, else on
seeded random uint8 images of the recorded size, through the recorded normalisation), then
renamed: a failure leaves nothing half-written. The last stdout line:
``onnx=<path> opset=<n> batch=<static n|dynamic> max_abs_diff=<float> top1_agree=<k>/<n>``.

Exporters: torch's TorchScript exporter (``dynamo=False``) for opsets up to 17: it still
writes opset 11, which Ascend's ATC and both ModelZoo export scripts use, and its
deprecation warning is kept from the user; the dynamo exporter for 18 and newer, which it
cannot convert down to 11.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ignite_rn50 import cli
from ignite_rn50.config.declaration import Config
from ignite_rn50.config.parsing import TRAINING_ONLY, build_parser, config_from_args
from ignite_rn50.errors import Stop, UserError, path_problem
from ignite_rn50.evaluate import checkpoint_defaults

PROG = "ignite_rn50.export"
NAMES = {"mmcls": ("input", "probs"), "modelzoo": ("actual_input_1", "output1")}
TORCHSCRIPT_OPSETS = range(9, 18)  # what the TorchScript exporter writes here (torch 2.14)
CHECK_TOLERANCE = 1e-3  # fp32 logits of onnxruntime against PyTorch's
RANDOM_IMAGES = 16  # what the check runs on where there is no data (at least)


@dataclass(frozen=True)
class ExportJob:
    cfg: Config
    checkpoint: Path
    output: Path
    opset: int
    batch: int | None  # None: dynamic
    names: str
    softmax: bool
    aipp: Path | None
    with_preprocess: bool
    verify_data: bool
    weights: str | None = None  # --weights: ema, raw, or None = ema where the file has it
    has_data: bool = True  # a test split to check on (else random images)


def build_export_parser() -> argparse.ArgumentParser:
    parser = build_parser(prog=f"python -m {PROG}", description="Export a checkpoint (ours "
                          "or mmcls 0.x) to ONNX and check it with onnxruntime.")
    group = parser.add_argument_group("export")
    group.add_argument("--checkpoint", required=True, help="checkpoint file to export")
    cli.add_weights_flag(group)
    group.add_argument("--output", required=True, help="the .onnx file to write")
    group.add_argument("--opset", type=int, default=11, help="ONNX opset (default: 11, what "
                       "ATC and the ModelZoo export scripts use; 9-17 TorchScript exporter, "
                       "18+ dynamo exporter)")
    batch = group.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=int, default=1, help="static batch size (default: 1)")
    batch.add_argument("--dynamic-batch", action="store_true",
                       help="a dynamic batch dimension instead of a static one")
    group.add_argument("--names", choices=list(NAMES), default="mmcls",
                       help="input/output names: mmcls = input/probs (its pytorch2onnx.py), "
                       "modelzoo = actual_input_1/output1 (the ModelZoo pth2onnx.py scripts); "
                       "default: mmcls")
    group.add_argument("--softmax", action="store_true", help="append a softmax (class "
                       "probabilities, as mmcls's export) to the logits")
    pre = group.add_mutually_exclusive_group()
    pre.add_argument("--aipp", metavar="FILE", help="also write the AIPP config for Ascend's "
                     "ATC (uint8 RGB in, the dataset's normalisation on the chip) and print "
                     "the atc command for it")
    pre.add_argument("--with-preprocess", action="store_true", help="fold uint8 -> float and "
                     "the dataset's normalisation into the graph (input uint8 NCHW)")
    group.add_argument("--verify-data", action="store_true", help="run the exported model "
                       "over the whole test split with onnxruntime: top-1/top-5 as evaluate")
    return parser


# the export traces on the host, in this one process, whatever the run trained on
ONE_CPU_PROCESS = {"device": "cpu", "nproc": 1, "nodes": 1, "node_rank": 0}


def parse(argv: list[str] | None) -> ExportJob:
    args = vars(build_export_parser().parse_args(argv))
    job = {name: args.pop(name) for name in ("checkpoint", "output", "opset", "batch",
                                             "dynamic_batch", "names", "softmax", "aipp",
                                             "with_preprocess", "verify_data", "weights")
           if name in args}
    checkpoint = cli.existing_file("--checkpoint", job["checkpoint"])
    cfg = config_from_args(args, fixed={**TRAINING_ONLY, **ONE_CPU_PROCESS},
                           base=checkpoint_defaults(checkpoint), data_optional=True)
    has_data = _has_data(cfg, bool(job.get("verify_data")))
    batch = None if job.get("dynamic_batch") else job.get("batch", 1)
    if batch is not None and batch < 1:
        raise UserError(f"--batch must be positive, got {batch}")
    opset = job.get("opset", 11)
    if opset < TORCHSCRIPT_OPSETS.start:
        raise UserError(f"--opset {opset} is older than the exporter writes; pass "
                        f"{TORCHSCRIPT_OPSETS.start} or newer (11 for ATC)")
    aipp = job.get("aipp")
    return ExportJob(cfg, checkpoint, _resolved("--output", job["output"]), opset, batch,
                     job.get("names", "mmcls"), bool(job.get("softmax")),
                     _resolved("--aipp", aipp) if aipp else None,
                     bool(job.get("with_preprocess")), bool(job.get("verify_data")),
                     job.get("weights"), has_data)


def _has_data(cfg: Config, verify_data: bool) -> bool:
    """Whether there is a test split (given by --data or --config, or generated); only
    --verify-data needs one."""
    from ignite_rn50.data.registry import dataset_spec

    spec = dataset_spec(cfg.dataset)
    if cfg.data is not None or not spec.needs_files:
        return True
    if verify_data:
        raise UserError(f"--verify-data runs the exported model over the test split, which "
                        f"needs --data: pass {spec.data_help}, or drop --verify-data")
    return False


def _resolved(flag: str, text: str) -> Path:
    """An output's real place (a link followed), or one line: a symlink loop has none."""
    path = Path(text).expanduser()
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: Python's "Symlink loop from ..."
        raise UserError(f"{flag} {path} {path_problem(path) or 'cannot be resolved'}; pass "
                        "another file name") from None


def run_export(job: ExportJob) -> None:
    """Export, check, then keep: the file appears under its name only once onnxruntime
    agrees with PyTorch (see ``check_set_and_model``)."""
    from ignite_rn50.deploy import onnx

    onnx.require_packages(job.opset)
    check_outputs(job)
    test, model, sizes = check_set_and_model(job)
    module = onnx.ExportModel(model.float().eval(), test.mean, test.std,
                                job.with_preprocess, job.softmax)
    spec = onnx.GraphSpec(job.opset, job.batch, *NAMES[job.names], job.with_preprocess,
                            test.image_size)
    inputs = _model_inputs(test, job.with_preprocess)
    tmp = _temporary_beside(job.output)
    aipp_tmp = _temporary_beside(job.aipp) if job.aipp is not None else None
    try:
        onnx.export(module, spec, tmp)
        onnx_model = onnx.OnnxModel(tmp)
        if onnx_model.opset != job.opset:
            raise UserError(f"--opset {job.opset}: the exporter wrote opset {onnx_model.opset} "
                            f"instead; pass an opset it writes (9-17, or 18 with onnxscript)")
        agreement = onnx.compare(module, onnx_model, onnx.as_batches(inputs, sizes))
        _require_agreement(agreement, job.output)
        if aipp_tmp is not None:
            _write_aipp(job, spec, (test, onnx_model), aipp_tmp)
        if job.verify_data:
            top1, top5, images = onnx.accuracy(onnx_model, inputs, test.labels, job.batch)
            print(f"onnxruntime on the test split: top1={top1:.4f} top5={top5:.4f} "
                  f"images={images}", flush=True)
        if aipp_tmp is not None and job.aipp is not None:
            os.replace(aipp_tmp, job.aipp)
        os.replace(tmp, job.output)
    finally:
        for path in (tmp, aipp_tmp):
            if path is not None:
                path.unlink(missing_ok=True)
    batch = f"static {job.batch}" if job.batch else "dynamic"
    print(f"onnx={job.output} opset={onnx_model.opset} batch={batch} "
          f"max_abs_diff={agreement.max_abs_diff:.3g} "
          f"top1_agree={agreement.top1_agree}/{agreement.images}", flush=True)


def check_set_and_model(job: ExportJob) -> tuple[Any, Any, list[int]]:
    """What onnxruntime is checked on (an ImageSet), the model, and the batch sizes of the
    check: the test split's first images where there is data; without it, RANDOM_IMAGES
    seeded random uint8 images of the size the checkpoint records, with its statistics and
    its model (``model_from_checkpoint``, as predict builds it)."""
    from ignite_rn50.deploy import onnx
    from ignite_rn50.evaluate import EvalJob, load_test_and_model, model_from_checkpoint

    if job.has_data:
        test, model = load_test_and_model(EvalJob(job.cfg, job.checkpoint,
                                                  weights=job.weights))
        return test, model, onnx.check_sizes(job.batch, len(test))
    import torch

    from ignite_rn50.data.spec import ImageSet

    loaded = model_from_checkpoint(job.cfg, job.checkpoint, job.weights)
    sizes = ([job.batch] * -(-RANDOM_IMAGES // job.batch) if job.batch else
             [1, 7, RANDOM_IMAGES - 8])
    count, side = sum(sizes), loaded.image_size
    images = torch.randint(0, 256, (count, 3, side, side), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    print(f"no --data: onnxruntime is checked on {count} random {side}x{side} images",
          flush=True)
    test = ImageSet(images, torch.zeros(count, dtype=torch.int64), len(loaded.class_names),
                    loaded.mean, loaded.std, tuple(loaded.class_names))
    return test, loaded.model, sizes


def _require_agreement(agreement: Any, output: Path) -> None:
    """NaN/inf logits are the model's fault (status 2, like its NaN weights); a disagreement
    of finite ones is the exporter's (status 1)."""
    problem = agreement.problem(CHECK_TOLERANCE)
    if problem is None:
        return
    text = f"onnxruntime's check of {output.name} fails: {problem}; nothing was written"
    if agreement.nonfinite:
        raise UserError(f"{text}. Export a checkpoint whose outputs are finite")
    raise Stop(text)


# What a run folder holds besides its checkpoints (names of training/checkpoints.py)
RUN_FILES = ("config.yaml", "summary.json", "train.log", "train_loss.csv", "curves.png")


def _trainer_owns(path: Path) -> bool:
    """A checkpoint's name anywhere, or a file the trainer writes in a run folder."""
    from ignite_rn50.outputs.rundir import LOCK_NAME
    from ignite_rn50.training.checkpoints import BEST_RE, EPOCH_RE, MID_RE

    name = path.name.removesuffix(".abandoned")
    if any(pattern.match(name) for pattern in (EPOCH_RE, BEST_RE, MID_RE)):
        return True
    return name in (*RUN_FILES, LOCK_NAME) and (path.parent / LOCK_NAME).exists()


def _is_onnx(path: Path) -> bool:
    """A ModelProto with a graph. Its writers put ir_version (field 1, a varint: byte 0x08)
    first; a file that does not start so is not read whole (a checkpoint, a dataset)."""
    import onnx

    try:
        with open(path, "rb") as fh:
            if fh.read(1) != b"\x08":
                return False
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - whatever does not parse is not ONNX
        return False
    return model.ir_version > 0 and len(model.graph.node) > 0


def _is_aipp(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(64).lstrip().startswith(b"aipp_op")
    except OSError:
        return False


def check_outputs(job: ExportJob) -> None:
    """Nothing already written is lost: --output replaces an ONNX file only (and only once
    the check passed), --aipp an AIPP config only; neither may be the checkpoint, the other
    output or a file the trainer owns. One UserError naming the file and the fix."""
    outputs = [("--output", job.output, "ONNX file", _is_onnx, "model.onnx")]
    if job.aipp is not None:
        outputs.append(("--aipp", job.aipp, "AIPP config", _is_aipp, "aipp.cfg"))
        if job.aipp == job.output:
            raise UserError(f"--aipp and --output both name {job.output}; pass two files")
    for flag, path, kind, is_kind, example in outputs:
        fix = f"pass another file name ({example})"
        if path.is_dir():
            raise UserError(f"{flag} {path} is a folder; pass a file name ({example})")
        if path.exists() and os.path.samefile(path, job.checkpoint):
            raise UserError(f"{flag} {path} is the checkpoint being exported; {fix}")
        if _trainer_owns(path):
            raise UserError(f"{flag} {path} is a file the trainer owns (a run's checkpoint, "
                            f"log or report); {fix}")
        if path.exists() and not is_kind(path):
            raise UserError(f"{flag} {path} exists and is not an {kind}; {fix}, or move "
                            "that file away first")


def _model_inputs(test: Any, uint8: bool) -> Any:
    """The test split as the exported graph takes it: uint8 NCHW, or normalised floats with
    exactly the evaluation pipeline's arithmetic."""
    from ignite_rn50.data import pipelines

    if uint8:
        return test.images
    return pipelines.normalize(test.images, pipelines.Normalization.of(test))


def _temporary_beside(output: Path) -> Path:
    if output.is_dir():
        raise UserError(f"--output {output} is a folder; pass a file name (model.onnx)")
    try:
        fd, name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.",
                                    suffix=".tmp")
    except OSError as exc:
        raise UserError(f"--output {output}: {output.parent} is not writable ({exc.strerror}); "
                        "pass a writable folder") from None
    os.close(fd)
    os.chmod(name, 0o644)  # as any file the user writes (mkstemp makes it private)
    return Path(name)


def _write_aipp(job: ExportJob, spec: Any, checked: tuple[Any, Any], tmp: Path) -> None:
    """The AIPP config for ATC (into ``tmp``, renamed with the ONNX file) and its command
    line; the config's arithmetic checked by applying its formula to the uint8 test images
    against the pipeline's floats, through the exported model."""
    import numpy as np

    from ignite_rn50.deploy import onnx

    assert job.aipp is not None
    test, onnx_model = checked
    tmp.write_text(onnx.aipp_config(test.mean, test.std, test.image_size))
    n = job.batch or 8
    aipp_in = onnx.aipp_apply(test.images[:n].numpy(), test.mean, test.std)
    float_in = _model_inputs(test, uint8=False)[:n].numpy()
    by_aipp, by_pipeline = onnx_model(aipp_in), onnx_model(float_in)
    diff = float(np.abs(by_aipp - by_pipeline).max())
    agree = int((by_aipp.argmax(1) == by_pipeline.argmax(1)).sum())
    if not np.isfinite(diff):  # the figures below are printed, not a guard; NaN is no figure
        raise UserError(f"--aipp {job.aipp}: the exported model's outputs on AIPP's inputs "
                        "hold NaN/inf; nothing was written")
    print(f"aipp={job.aipp} (RGB888_U8, mean {'/'.join(f'{m:g}' for m in test.mean)}, "
          f"var_reci 1/std) checked on {n} uint8 test images: max_abs_diff={diff:.3g} "
          f"top1_agree={agree}/{n}", flush=True)
    print(f"atc: {onnx.atc_command(job.output, job.aipp, spec)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    return cli.main(PROG, parse, run_export, argv)


if __name__ == "__main__":
    sys.exit(main())
