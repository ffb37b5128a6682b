"""``python -m ignite_rn50.predict --checkpoint FILE IMAGE_OR_FOLDER... [--topk 5] [--json]``:
the top-k classes of each image, by name, with their probabilities.

FILE is a checkpoint of this trainer (it records its class names, normalisation, image size
and stem) or an mmcls 0.x file (class names from ``meta["CLASSES"]``; the run flags say the
rest, CIFAR-100's by default); where no names are known the classes are indices. Each image
goes through the training's own preprocessing: torchvision's loader (RGB), resize of the
shorter side and centre crop to the image size, normalisation. A folder is read recursively
(the files ImageFolder accepts); an image that does not read is named on stderr, one line
each, the others are still predicted, and the status is then 1. Any device (``--device``).

Text: ``PATH: NAME PROB%, NAME PROB%, ...`` per image; ``--json``: one object per line,
``{"path": ..., "top": [{"class": name, "index": i, "prob": p}, ...]}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ignite_rn50 import cli
from ignite_rn50.config.declaration import Config
from ignite_rn50.config.parsing import TRAINING_ONLY, build_parser, config_from_args
from ignite_rn50.errors import Stop, UserError, path_problem
from ignite_rn50.evaluate import checkpoint_defaults, model_from_checkpoint
from ignite_rn50.export import ONE_CPU_PROCESS

PROG = "ignite_rn50.predict"
BATCH = 64  # images per forward pass


@dataclass(frozen=True)
class PredictJob:
    cfg: Config
    checkpoint: Path
    inputs: tuple[Path, ...]
    topk: int
    json: bool
    weights: str | None = None  # --weights: ema, raw, or None = ema where the file has it


def build_predict_parser() -> argparse.ArgumentParser:
    parser = build_parser(prog=f"python -m {PROG}", description="Top-k classes of images by a "
                          "checkpoint (ours or mmcls 0.x).")
    group = parser.add_argument_group("predict")
    group.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER",
                       help="image files, or folders read recursively")
    group.add_argument("--checkpoint", required=True, help="checkpoint file to predict with")
    group.add_argument("--topk", type=int, default=5, help="classes per image (default: 5)")
    group.add_argument("--json", action="store_true", help="one JSON object per image and line")
    cli.add_weights_flag(group)
    return parser


def parse(argv: list[str] | None) -> PredictJob:
    args = vars(build_predict_parser().parse_args(argv))
    checkpoint = cli.existing_file("--checkpoint", args.pop("checkpoint"))
    images, topk, as_json = args.pop("images"), args.pop("topk", 5), args.pop("json", False)
    which = args.pop("weights", None)
    if topk < 1:
        raise UserError(f"--topk must be positive, got {topk}")
    for text in images:
        path = Path(text).expanduser()
        problem = path_problem(path) or ("" if path.exists() else ": no such file or folder")
        if problem:
            raise UserError(f"{path}{' ' if not problem.startswith(':') else ''}{problem}; "
                            "pass image files or folders")
    # one process on the asked device; no dataset is read, so --data is never needed
    one_process = {**ONE_CPU_PROCESS, "device": args.get("device", "auto")}
    cfg = config_from_args(args, fixed={**TRAINING_ONLY, **one_process},
                           base=checkpoint_defaults(checkpoint), data_optional=True)
    return PredictJob(cfg, checkpoint, tuple(Path(t).expanduser() for t in images), topk,
                      as_json, which)


def image_files(inputs: tuple[Path, ...]) -> list[Path]:
    """Files as given; folders' image files (ImageFolder's extensions), recursively, sorted."""
    from ignite_rn50.data.folder import is_image_file

    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(str(p)))
        else:
            files.append(path)
    return files


def run_predict(job: PredictJob) -> None:
    import torch

    from ignite_rn50.data import pipelines
    from ignite_rn50.data.files import Decoded
    from ignite_rn50.data.spec import ImageFiles
    from ignite_rn50.training.runtime import open_device

    device = open_device(job.cfg)
    predictor = model_from_checkpoint(job.cfg, job.checkpoint, job.weights)
    model = predictor.model.to(device).eval()
    norm = pipelines.Normalization(tuple(m / 255 for m in predictor.mean),
                                   tuple(s / 255 for s in predictor.std))
    files = image_files(job.inputs)
    decoded = Decoded(ImageFiles(tuple(str(f) for f in files), predictor.image_size))
    failed = 0
    k = min(job.topk, len(predictor.class_names))
    for start in range(0, len(files), BATCH):
        items = [(files[i], decoded[i]) for i in range(start, min(start + BATCH, len(files)))]
        for _, item in items:
            if isinstance(item, str):
                failed += 1
                sys.stderr.write(f"{PROG}: error: {item}\n")
        good = [(path, item) for path, item in items if not isinstance(item, str)]
        if not good:
            continue
        images = pipelines.normalize(torch.stack([t for _, t in good]).to(device), norm)
        with torch.no_grad():
            probs, indices = model(images).float().softmax(1).topk(k, dim=1)
        for (path, _), p, idx in zip(good, probs.cpu().tolist(), indices.cpu().tolist(),
                                     strict=True):
            print_prediction(path, [(predictor.class_names[i], i, q) for i, q in zip(idx, p,
                                                                                    strict=True)],
                             job.json)
    if failed:
        raise Stop(f"{failed} of {len(files)} images could not be read (named above); the "
                   "others were predicted")


def print_prediction(path: Path, top: list[tuple[str, int, float]], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"path": str(path), "top": [{"class": name, "index": i, "prob": p}
                                                     for name, i, p in top]}), flush=True)
    else:
        print(f"{path}: " + ", ".join(f"{name} {100 * p:.2f}%" for name, _, p in top),
              flush=True)


def main(argv: list[str] | None = None) -> int:
    return cli.main(PROG, parse, run_predict, argv)


if __name__ == "__main__":
    sys.exit(main())
