"""Our whole trainer against mmcls's, with the randomness taken out: mmcls 0.24 trains one
check-6 run while its initial weights and every mixed batch it trains on are recorded; then
our trainer (Engine, handlers, lr schedule, step, evaluation) trains from those weights on
those batches (``--init-from``, ``--no-drop-last``: mmcls's 41 batches an epoch) and the two
per-epoch top-1 lists are printed. Equal lists mean that only the random streams (data,
crops, mixing draws, initial weights) can tell the two stacks apart.

    ../mmcls-venv/bin/python benchmarks/mmcls_parity/replay.py [--recipe mix] [--seed 0]
        [--split-seed 1] [--epochs 10] [--work DIR]

About twice one check-6 run's time (measured: 2 x ~10 min on our 2 cores, one thread each).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

from harness import REPO, mmcls_config, write_digits  # noqa: E402


def record(rec: Path, argv: list[str]) -> None:
    """In the child: mmcls's tools/train.py (through the harness), recording rec/init.pth and
    rec/batches.pt (the images and soft targets after its augments, in training order)."""
    import atexit

    import harness
    from mmcls.models.classifiers.image import ImageClassifier

    batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward_train(self, img, gt_label, **kwargs):  # mmcls's, plus the two records
        if not batches and not (rec / "init.pth").exists():
            torch.save({"meta": {}, "state_dict": self.state_dict()}, rec / "init.pth")
        if self.augments is not None:
            img, gt_label = self.augments(img, gt_label)
        batches.append((img.detach().clone(), gt_label.detach().float().clone()))
        return dict(self.head.forward_train(self.extract_feat(img), gt_label))

    ImageClassifier.forward_train = forward_train
    atexit.register(lambda: torch.save(batches, rec / "batches.pt"))
    harness._main(argv)


def replay(rec: Path, per_epoch: int, argv: list[str]) -> None:
    """In the child: our trainer with the input pipeline and the mixing replaced by the
    recording (everything else is the trainer as users run it)."""
    from ignite_rn50.data import mixing, pipelines
    from ignite_rn50.run import main

    batches = torch.load(rec / "batches.pt")
    targets: dict[str, torch.Tensor] = {}

    def recorded(self):  # DeviceTrainData.__iter__: this epoch's recorded batches
        for b in range(self.start_batch, self.num_batches):
            images, soft = batches[(self.epoch - 1) * per_epoch + b]
            targets["now"] = soft
            # no augments (the smooth recipe): mmcls recorded the labels themselves
            labels = soft.long() if soft.dim() == 1 else torch.zeros(len(images),
                                                                     dtype=torch.long)
            yield images.contiguous(), labels

    pipelines.DeviceTrainData.__iter__ = recorded
    mixing.BatchMix.__call__ = lambda self, images, labels, state: (images, targets["now"])
    sys.exit(main(argv))


def _ours_flags(data: Path, recipe: str, seed: int, epochs: int, out: Path) -> list[str]:
    from driver import OURS_COMMON, RECIPES

    return [*OURS_COMMON, "--data", str(data), "--depth", "18", "--batch-size", "32",
            "--epochs", str(epochs), "--seed", str(seed), "--output-dir", str(out),
            *RECIPES[recipe][1]]


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] in ("_record", "_replay"):
        rec = Path(sys.argv[2])
        if sys.argv[1] == "_record":
            record(rec, sys.argv[3:])
        else:
            replay(rec, int(sys.argv[3]), sys.argv[4:])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="mix")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-seed", type=int, default=1)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--work", help="keep the runs here (default: a temporary folder)")
    args = p.parse_args()
    from driver import RECIPES, mmcls_log

    work = Path(args.work or tempfile.mkdtemp())
    rec = work / "recording"
    rec.mkdir(parents=True, exist_ok=True)
    data = write_digits(work / "digits", 1297, 500, args.split_seed)
    cfg = mmcls_config(work / "mmcls.py", data, batch=32, epochs=args.epochs,
                       extra=RECIPES[args.recipe][0])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    me = [sys.executable, __file__]
    subprocess.run([*me, "_record", str(rec), "train.py", str(cfg), "--work-dir",
                    str(work / "mmcls"), "--device", "cpu", "--seed", str(args.seed)],
                   cwd=work, env=env, check=True, capture_output=True)
    theirs = [r["accuracy_top-1"] for r in mmcls_log(work / "mmcls") if r["mode"] == "val"]
    per_epoch = len(torch.load(rec / "batches.pt")) // args.epochs
    out = work / "ours"
    flags = _ours_flags(data, args.recipe, args.seed, args.epochs, out)
    subprocess.run([*me, "_replay", str(rec), str(per_epoch), *flags, "--no-drop-last",
                    "--init-from", str(rec / "init.pth")], cwd=REPO, env=env, check=True,
                   capture_output=True)
    history = json.loads((out / "summary.json").read_text())["history"]
    ours = [round(100 * row["val_top1"], 2) for row in history]
    print(f"replay {args.recipe} seed {args.seed} split {args.split_seed}: top-1 per epoch "
          f"mmcls {theirs}; ours on mmcls's batches and initial weights {ours}; "
          f"{'identical' if ours == theirs else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
