"""Parity with mmcls 0.24, shown by running it beside ours on this machine (CPU). Run with the
Python of setup.sh's venv, which has both stacks:

    ../mmcls-venv/bin/python benchmarks/mmcls_parity/driver.py [--checks 1 2 3 4 5 6] [...]

One figure per check, each on a line of its own starting with ``check<N>``:

1. the same weights give the same logits (fp32, depth 18 and 50, train and eval mode);
2. initialisation statistics per tensor (conv and head weight std, the zero last-BN gamma);
3. the lr of every iteration of a short run, from mmcls's log.json, for step and cosine,
   each alone and with linear warm-up by iterations and by epochs;
4. mixup, cutmix and label smoothing given the same lam, permutation and box; the share of
   batches each augment gets over many batches;
5. checkpoints both ways: top-1/top-5 of an mmcls checkpoint by our evaluate and by mmcls's
   tools/test.py, and of ours re-laid into mmcls's layout;
6. training on the same small real data set (scikit-learn's digits as cifar-100-python),
   several seeds per recipe: best top-1, mean and spread per stack; our training img/s over
   mmcls's on the same machine, model and batch.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import re
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from harness import mmcls_config, mmcls_root, run_ours, run_tool, write_digits  # noqa: E402

from ignite_rn50.data import mixing  # noqa: E402
from ignite_rn50.model import weights
from ignite_rn50.model.resnet import build_model  # noqa: E402

OURS_COMMON = ["--device", "cpu", "--dataset", "cifar100", "--loggers", "--progress-bar", "off",
               "--num-workers", "0", "--print-freq", "1"]


def _mmcls_model(depth: int):
    import mmcv
    from mmcls.models import build_classifier

    cfg = mmcv.Config.fromfile(str(mmcls_root() / "configs" / "resnet" /
                                   "resnet50_8xb16_cifar100.py"))
    cfg.model.backbone.depth = depth
    cfg.model.head.in_channels = 512 if depth < 50 else 2048
    model = build_classifier(cfg.model)
    model.init_weights()
    return model


def _mmcls_logits(model, x: torch.Tensor) -> torch.Tensor:
    return model.head.fc(model.extract_feat(x, stage="pre_logits"))


# --- 1 and 2: the model ---------------------------------------------------------------------------

def check_logits(tmp: Path) -> None:
    figures = []
    for depth in (18, 50):
        torch.manual_seed(depth)
        theirs = _mmcls_model(depth)
        path = tmp / f"mmcls_r{depth}.pth"
        torch.save({"meta": {}, "state_dict": theirs.state_dict()}, path)
        ours = build_model(depth, 100)
        weights.load_into(ours, path, flag="--checkpoint")  # the file reader users get
        x = torch.randn(8, 3, 32, 32)
        for mode in ("train", "eval"):
            a, b = copy.deepcopy(theirs), copy.deepcopy(ours)
            a.train(mode == "train")
            b.train(mode == "train")
            with torch.no_grad():
                diff = (_mmcls_logits(a, x) - b(x)).abs().max().item()
            figures.append(f"depth {depth} {mode} {diff:.2e}")
    print(f"check1 same weights, same logits (max abs diff, fp32): {'; '.join(figures)}")


def check_init(repeats: int = 3) -> None:
    """Per tensor: the std of ours over the std of mmcls's, each from a fresh init, against
    the sampling error of that ratio (two independent std estimates of n values each:
    1/sqrt(n) relative)."""
    worst, zero_sets, head = 0.0, True, []
    tensors = 0
    for seed in range(repeats):
        torch.manual_seed(seed)
        theirs = weights.from_mmcls(_mmcls_model(50).state_dict())
        torch.manual_seed(seed + 100)
        ours = build_model(50, 100).state_dict()
        tensors = 0
        for key, value in ours.items():
            if not key.endswith("weight") or value.dim() == 0:
                continue
            mine, other = value.float(), theirs[key].float()
            if value.dim() == 1:  # BN gamma: which ones start at zero
                zero_sets &= bool(((mine == 0) == (other == 0)).all())
                continue
            tensors += 1
            ratio = mine.std().item() / other.std().item()
            worst = max(worst, abs(ratio - 1) * math.sqrt(value.numel()))
            if key == "fc.weight":
                head.append((mine.std().item(), other.std().item()))
    ours_head = statistics.mean(h[0] for h in head)
    theirs_head = statistics.mean(h[1] for h in head)
    print(f"check2 initialisation, {tensors} weight tensors of ResNet-50 x {repeats} inits: "
          f"worst |std ratio - 1| = {worst:.2f} sampling sd (of {tensors * repeats} ratios); "
          f"zero last-BN gamma in the same "
          f"tensors: {zero_sets}; head std ours {ours_head:.5f} mmcls {theirs_head:.5f} "
          f"(N(0, 0.01))")


# --- 3: learning rates --------------------------------------------------------------------------

SCHEDULES = {
    "step": ("policy='step', step=[2, 3], gamma=0.2",
             ["--lr-policy", "step", "--lr-milestones", "2", "3", "--lr-gamma", "0.2"]),
    "cosine": ("policy='CosineAnnealing', min_lr=0", ["--lr-policy", "cosine", "--min-lr", "0"]),
}
WARMUPS = {
    "": ("", []),
    "+warm-up 6 iters": (", warmup='linear', warmup_iters=6, warmup_ratio=0.1",
                         ["--warmup-iters", "6", "--warmup-factor", "0.1"]),
    "+warm-up 2 epochs": (", warmup='linear', warmup_iters=2, warmup_ratio=0.001, "
                          "warmup_by_epoch=True", ["--warmup-epochs", "2", "--warmup-factor",
                                                   "0.001"]),
}


def mmcls_log(work: Path) -> list[dict]:
    log = sorted(work.glob("*.log.json"))[-1]
    return [json.loads(line) for line in log.read_text().splitlines()[1:] if line.strip()]


def our_lrs(out: Path) -> list[float]:
    with open(out / "train_loss.csv") as fh:
        return [float(row["lr"]) for row in csv.DictReader(fh)]


def check_lr(tmp: Path) -> dict[str, Path]:
    data = write_digits(tmp / "digits64", 64, 32)
    figures, works = [], {}
    for sname, (spolicy, sflags) in SCHEDULES.items():
        for wname, (wpolicy, wflags) in WARMUPS.items():
            name = f"{sname}{wname}"
            work = tmp / f"lr_{len(works)}"
            cfg = mmcls_config(work.with_suffix(".py"), data, extra=(
                f"lr_config = dict(_delete_=True, {spolicy}{wpolicy})"))
            proc = run_tool("train.py", [str(cfg), "--work-dir", str(work), "--device", "cpu",
                                         "--seed", "0"], tmp)
            assert proc.returncode == 0, proc.stderr[-3000:]
            theirs = [row["lr"] for row in mmcls_log(work) if row["mode"] == "train"]
            out = tmp / f"ours_lr_{len(works)}"
            proc = run_ours("ignite_rn50.run", [*OURS_COMMON, "--data", str(data), "--depth",
                                                "18", "--batch-size", "16", "--lr", "0.1",
                                                "--epochs", "4", "--output-dir", str(out),
                                                *sflags, *wflags])
            assert proc.returncode == 0, proc.stderr[-3000:]
            ours = our_lrs(out)
            assert len(ours) == len(theirs) == 16, (len(ours), len(theirs))
            diff = max(abs(a - b) for a, b in zip(ours, theirs, strict=True))
            within = sum(abs(a - b) <= 5e-6 + 1e-12 for a, b in zip(ours, theirs, strict=True))
            figures.append(f"{name} {diff:.1e} ({within}/16 within log.json's rounding)")
            works[name] = work
            works[f"ours {name}"] = out
    print(f"check3 lr at each of 16 iterations, max |ours - mmcls| (log.json keeps 5 "
          f"decimals): {'; '.join(figures)}")
    return works


# --- 4: mixing ------------------------------------------------------------------------------------

def check_mixing(batches: int = 20000) -> None:
    from mmcls.models.losses import LabelSmoothLoss
    from mmcls.models.utils.augment import Augments
    from mmcls.models.utils.augment.cutmix import BatchCutMixLayer
    from mmcls.models.utils.augment.mixup import BatchMixupLayer

    img = torch.randn(16, 3, 32, 32)
    labels = torch.randint(0, 100, (16,))
    worst = {"mixup": 0.0, "cutmix": 0.0}
    for seed in range(50):
        for name, layer in (("mixup", BatchMixupLayer(alpha=1.0, num_classes=100, prob=1.0)),
                            ("cutmix", BatchCutMixLayer(alpha=1.0, num_classes=100,
                                                        prob=1.0))):
            np.random.seed(seed)
            torch.manual_seed(seed)
            theirs_img, theirs_y = layer(img.clone(), labels.clone())
            np.random.seed(seed)  # the same draws, in mmcls's order: lam, perm, (cy, cx)
            torch.manual_seed(seed)
            lam = float(np.random.beta(1.0, 1.0))
            perm = torch.randperm(16)
            targets = mixing.one_hot(labels, 100)
            if name == "mixup":
                ours_img, ours_y = mixing.mixup(img.clone(), targets, lam, perm)
            else:
                cy, cx = int(np.random.randint(0, 32)), int(np.random.randint(0, 32))
                box, lam = mixing.cutmix_box(lam, 32, 32, cy, cx)
                ours_img, ours_y = mixing.cutmix(img.clone(), targets, box, lam, perm)
            worst[name] = max(worst[name], (theirs_img - ours_img).abs().max().item(),
                              (theirs_y - ours_y).abs().max().item())
    logits = torch.randn(16, 100)
    loss_theirs = LabelSmoothLoss(label_smooth_val=0.1, mode="original")(logits, ours_y)
    loss_ours = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(logits, ours_y)
    recipe = [dict(type="BatchMixup", alpha=1.0, num_classes=100, prob=0.5),
              dict(type="BatchCutMix", alpha=1.0, num_classes=100, prob=0.5)]
    counts = {"BatchMixupLayer": 0, "BatchCutMixLayer": 0}
    originals = {cls: cls.__call__ for cls in (BatchMixupLayer, BatchCutMixLayer)}

    def counting(cls):  # which layer mmcls's own chooser called (a wrapper, here only)
        def call(self, *args, **kwargs):
            counts[cls.__name__] += 1
            return originals[cls](self, *args, **kwargs)
        return call

    for cls in originals:
        cls.__call__ = counting(cls)
    try:
        augments = Augments(recipe)
        small, small_labels = torch.randn(2, 3, 4, 4), torch.tensor([0, 1])
        for _ in range(batches):
            augments(small, small_labels)
    finally:
        for cls, call in originals.items():
            cls.__call__ = call
    ours = mixing.draw_epoch(mixing.MixSpec.resolve(1.0, None, 1.0, None), 0, batches, 2,
                             (4, 4)).kinds
    identity = 1 - (counts["BatchMixupLayer"] + counts["BatchCutMixLayer"]) / batches
    print(f"check4 mixing given the same lam/perm/box, max abs diff of images and targets: "
          f"mixup {worst['mixup']:.1e}, cutmix {worst['cutmix']:.1e}; label-smoothed loss "
          f"mmcls {loss_theirs.item():.6f} ours {loss_ours.item():.6f}; share of "
          f"{batches} batches mixup/cutmix/none: mmcls "
          f"{counts['BatchMixupLayer'] / batches:.3f}/{counts['BatchCutMixLayer'] / batches:.3f}"
          f"/{identity:.3f}, ours {np.mean(ours == 1):.3f}/{np.mean(ours == 2):.3f}/"
          f"{np.mean(ours == 0):.3f}")


def _z(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample z of the means (independent draws): |z| > 4 would be a real difference."""
    return float((a.mean() - b.mean()) / math.sqrt(a.var() / len(a) + b.var() / len(b)))


def _ks(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov distance and its 0.1 % critical value."""
    grid = np.union1d(a, b)
    cdf = [np.searchsorted(np.sort(x), grid, side="right") / len(x) for x in (a, b)]
    return float(np.abs(cdf[0] - cdf[1]).max()), 1.95 * math.sqrt((len(a) + len(b)) /
                                                                   (len(a) * len(b)))


def check_draws(batches: int = 100_000, epochs: int = 200) -> None:
    """What check 4's same-draws comparison leaves out: the draws themselves, over many
    batches. lam per augment against Beta(1, 1) (mixup) and against mmcls's own draws
    (cutmix's lam after the box correction); the box's size and centre; and the epochs'
    permutations (no two batches of an epoch share one; one fixed point per permutation on
    average, as a uniform permutation has)."""
    from mmcls.models.utils.augment.cutmix import BatchCutMixLayer

    spec = mixing.MixSpec.resolve(1.0, None, 1.0, None)
    ours = mixing.draw_epoch(spec, 1, batches, 2, (32, 32))
    mix_lam = ours.lams[ours.kinds == mixing.MIXUP]
    cut = ours.kinds == mixing.CUTMIX
    np.random.seed(1)
    layer = BatchCutMixLayer(alpha=1.0, num_classes=100, prob=0.5)
    theirs = [layer.cutmix_bbox_and_lam((2, 3, 32, 32), np.random.beta(1.0, 1.0))
              for _ in range(int(cut.sum()))]
    their_lam = np.array([lam for _, lam in theirs])
    their_box = np.array([box for box, _ in theirs], dtype=float)  # y1, y2, x1, x2
    our_box = ours.boxes[cut].astype(float)
    beta = np.random.default_rng(2).beta(1, 1, len(mix_lam))  # a reference sample
    z_beta = (mix_lam.mean() - 0.5) / math.sqrt(1 / 12 / len(mix_lam))
    figures = [f"mixup lam mean {mix_lam.mean():.4f} var {mix_lam.var():.4f} (Beta(1,1): "
               f"0.5000, {1 / 12:.4f}; z {z_beta:.2f}, KS {_ks(mix_lam, beta)[0]:.4f})"]
    d, crit = _ks(ours.lams[cut], their_lam)
    figures.append(f"cutmix lam ours {ours.lams[cut].mean():.4f}/{ours.lams[cut].var():.4f} "
                   f"mmcls {their_lam.mean():.4f}/{their_lam.var():.4f} (z "
                   f"{_z(ours.lams[cut], their_lam):.2f}, KS {d:.4f} < {crit:.4f})")
    for name, f in (("height", lambda b: b[:, 1] - b[:, 0]),
                    ("width", lambda b: b[:, 3] - b[:, 2]),
                    ("centre row", lambda b: (b[:, 0] + b[:, 1]) / 2),
                    ("centre column", lambda b: (b[:, 2] + b[:, 3]) / 2)):
        a, b = f(our_box), f(their_box)
        figures.append(f"box {name} ours {a.mean():.3f} mmcls {b.mean():.3f} (z {_z(a, b):.2f})")
    shared = fixed = 0
    for epoch in range(epochs):
        perms = mixing.draw_epoch(spec, epoch, 40, 32, (32, 32)).perms
        shared += 40 - len({tuple(p.tolist()) for p in perms})
        fixed += int((perms == torch.arange(32)).sum())
    figures.append(f"{epochs} epochs of 40 batches of 32: {shared} batches share a permutation "
                   f"within an epoch; fixed points per permutation {fixed / (40 * epochs):.3f} "
                   f"(uniform: 1)")
    print(f"check4 draws over {batches} batches: {'; '.join(figures)}", flush=True)


# --- 5: checkpoints both ways ---------------------------------------------------------------------

def mmcls_test(cfg: Path, ckpt: Path, cwd: Path) -> tuple[float, float]:
    proc = run_tool("test.py", [str(cfg), str(ckpt), "--metrics", "accuracy", "--device",
                                "cpu"], cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    top1 = float(re.search(r"accuracy_top-1 : ([\d.]+)", proc.stdout)[1])
    top5 = float(re.search(r"accuracy_top-5 : ([\d.]+)", proc.stdout)[1])
    return top1, top5


def our_evaluate(ckpt: Path, data: Path) -> tuple[float, float]:
    proc = run_ours("ignite_rn50.evaluate", ["--checkpoint", str(ckpt), "--device", "cpu",
                                             "--dataset", "cifar100", "--data", str(data),
                                             "--depth", "18", "--batch-size", "16"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = re.search(r"top1=([\d.]+) top5=([\d.]+)", proc.stdout.strip().splitlines()[-1])
    return float(match[1]), float(match[2])


def check_checkpoints(tmp: Path, works: dict[str, Path]) -> None:
    data = tmp / "digits64"
    work, ours_out = works["step"], works["ours step"]
    cfg = work.with_suffix(".py")
    theirs_ckpt = work / "epoch_4.pth"
    a, b = our_evaluate(theirs_ckpt, data), mmcls_test(cfg, theirs_ckpt, tmp)
    state = torch.load(ours_out / "checkpoint_4.pt", map_location="cpu", weights_only=True)
    relaid = tmp / "ours_in_mmcls_layout.pth"
    torch.save({"meta": {"epoch": 4}, "state_dict": weights.to_mmcls(state["model"])}, relaid)
    c, d = our_evaluate(ours_out / "checkpoint_4.pt", data), mmcls_test(cfg, relaid, tmp)
    print(f"check5 checkpoints both ways, top-1/top-5 on the 32 test images: mmcls's file by "
          f"ours {a[0]:.2f}/{a[1]:.2f} by mmcls {b[0]:.2f}/{b[1]:.2f}; ours by ours "
          f"{c[0]:.2f}/{c[1]:.2f} re-laid by mmcls {d[0]:.2f}/{d[1]:.2f}")


# --- 6: training on real data -------------------------------------------------------------------

RECIPES = {
    "step": ("optimizer = dict(lr=0.05, weight_decay=5e-4)\n"
             "lr_config = dict(_delete_=True, policy='step', step=[6, 8], gamma=0.2)",
             ["--lr", "0.05", "--weight-decay", "5e-4", "--lr-policy", "step",
              "--lr-milestones", "6", "8", "--lr-gamma", "0.2"]),
    "mix": ("optimizer = dict(lr=0.05, weight_decay=5e-4)\n"
            "lr_config = dict(_delete_=True, policy='CosineAnnealing', min_lr=0, "
            "warmup='linear', warmup_ratio=1e-3, warmup_iters=1, warmup_by_epoch=True)\n"
            # one model dict: a second `model =` in the file replaces mmcls_config's (depth)
            "model = dict(backbone=dict(depth=18), head=dict(_delete_=True, "
            "type='MultiLabelLinearClsHead', "
            "num_classes=100, in_channels=512, loss=dict(type='LabelSmoothLoss', "
            "label_smooth_val=0.1, mode='original')), train_cfg=dict(augments=["
            "dict(type='BatchMixup', alpha=1.0, num_classes=100, prob=0.5), "
            "dict(type='BatchCutMix', alpha=1.0, num_classes=100, prob=0.5)]))",
            ["--lr", "0.05", "--weight-decay", "5e-4", "--lr-policy", "cosine",
             "--warmup-epochs", "1", "--warmup-factor", "0.001", "--mixup-alpha", "1",
             "--cutmix-alpha", "1", "--label-smoothing", "0.1"]),
}
# the mix recipe taken apart: each component alone on the mix recipe's schedule
_MIX_SCHEDULE = RECIPES["mix"][0].split("\nmodel = ")[0]
_MIX_FLAGS = ["--lr", "0.05", "--weight-decay", "5e-4", "--lr-policy", "cosine",
              "--warmup-epochs", "1", "--warmup-factor", "0.001"]


def _component(head: str, augments: str, flags: list[str]) -> tuple[str, list[str]]:
    train_cfg = f", train_cfg=dict(augments=[{augments}])" if augments else ""
    return (f"{_MIX_SCHEDULE}\nmodel = dict(backbone=dict(depth=18), head=dict(_delete_=True, "
            f"{head}){train_cfg})", _MIX_FLAGS + flags)


_SOFT_HEAD = ("type='MultiLabelLinearClsHead', num_classes=100, in_channels=512, "
              "loss=dict(type='CrossEntropyLoss', loss_weight=1.0, use_soft=True)")  # mmcls's
# own resnet50_cifar_mixup head
RECIPES.update({
    "mixup": _component(_SOFT_HEAD, "dict(type='BatchMixup', alpha=1.0, num_classes=100, "
                        "prob=1.0)", ["--mixup-alpha", "1"]),
    "cutmix": _component(_SOFT_HEAD, "dict(type='BatchCutMix', alpha=1.0, num_classes=100, "
                         "prob=1.0)", ["--cutmix-alpha", "1"]),
    "smooth": _component("type='LinearClsHead', num_classes=100, in_channels=512, "
                         "loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, "
                         "mode='original')", "", ["--label-smoothing", "0.1"]),
})


def train_mmcls(tmp: Path, data: Path, recipe: str, seed: int, epochs: int,
                threads: int = 2) -> dict:
    work = tmp / f"train_mmcls_{recipe}_{seed}"
    cfg = mmcls_config(work.with_suffix(".py"), data, batch=32, epochs=epochs,
                       extra=RECIPES[recipe][0])
    proc = run_tool("train.py", [str(cfg), "--work-dir", str(work), "--device", "cpu",
                                 "--seed", str(seed)], tmp, threads=threads)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = mmcls_log(work)
    train = [r for r in rows if r["mode"] == "train"]
    losses = [statistics.mean(r["loss"] for r in train if r["epoch"] == e)
              for e in range(1, epochs + 1)]
    return {"best": max(r["accuracy_top-1"] for r in rows if r["mode"] == "val"),
            "top1": [r["accuracy_top-1"] for r in rows if r["mode"] == "val"],
            "loss": losses, "iters": len(train),
            "ips": 32 / statistics.median(r["time"] for r in train)}


def train_ours(tmp: Path, data: Path, recipe: str, seed: int, epochs: int,
               extra: list[str]) -> dict:
    threads = 1 if OURS_THREADS_ONE else 2
    out = tmp / f"train_ours_{recipe}_{seed}_{'_'.join(e.strip('-') for e in extra)}"
    proc = run_ours("ignite_rn50.run", [*OURS_COMMON, "--data", str(data), "--depth", "18",
                                        "--batch-size", "32", "--epochs", str(epochs),
                                        "--seed", str(seed), "--output-dir", str(out),
                                        *RECIPES[recipe][1], *extra], threads=threads)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    with open(out / "train_loss.csv") as fh:
        rows = list(csv.DictReader(fh))
    losses = [statistics.mean(float(r["loss"]) for r in rows if int(r["epoch"]) == e)
              for e in range(1, epochs + 1)]
    return {"best": 100 * summary["best_top1"],
            "top1": [100 * h["val_top1"] for h in summary["history"]],
            "loss": losses, "iters": len(rows), "ips": summary["fps"]}


OURS_THREADS_ONE = False  # check 6 with --jobs > 1: one thread per run, as mmcls's


def _welch(a: list[float], b: list[float]) -> float:
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    return (statistics.mean(a) - statistics.mean(b)) / math.sqrt(va + vb) if va + vb else 0.0


def summarise(recipe: str, runs: dict[str, list[dict]], label: str) -> str:
    best = {k: [r["best"] for r in v] for k, v in runs.items() if v}
    parts = [f"{k} {statistics.mean(v):.2f} +- {statistics.stdev(v):.2f} "
             f"({' / '.join(f'{x:.1f}' for x in v)})" for k, v in best.items()]
    welch = [f"{k} - mmcls: Welch t {_welch(v, best['mmcls']):.2f}"
             for k, v in best.items() if k != "mmcls"]
    ratio = statistics.median(r["ips"] for r in runs["ours"]) / statistics.median(
        r["ips"] for r in runs["mmcls"])
    return (f"check6 {recipe} recipe, {label}, best top-1: {'; '.join(parts)}; "
            f"{'; '.join(welch)}; training img/s ours/mmcls = {ratio:.3f}")


def check_training(tmp: Path, args: argparse.Namespace, ours_extra: list[list[str]]) -> None:
    """Every (recipe, seed, stack) run is one job; ``--jobs`` of them run at once (one thread
    each when more than one: 2 single-threaded runs get more done on 2 cores than one run on
    two threads). Each finished run is one JSON line in ``--results`` as it ends."""
    from concurrent.futures import ThreadPoolExecutor

    data = write_digits(tmp / f"digits_split{args.split_seed}", 1297, 500, args.split_seed)
    global OURS_THREADS_ONE
    threads = 1 if args.jobs > 1 else 2
    OURS_THREADS_ONE = threads == 1
    label = (f"digits 1297/500 split {args.split_seed}, ResNet-18 bs32 {args.epochs} epochs, "
             f"seeds {args.first_seed}-{args.first_seed + args.seeds - 1}")
    jobs = []
    for recipe in args.recipes:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            if not args.ours_only:
                jobs.append((recipe, seed, "mmcls", None))
            for extra in ours_extra:
                jobs.append((recipe, seed, "ours" + (" " + " ".join(extra) if extra else ""),
                             extra))

    def run(job: tuple) -> tuple:
        recipe, seed, stack, extra = job
        result = (train_mmcls(tmp, data, recipe, seed, args.epochs, threads) if extra is None
                  else train_ours(tmp, data, recipe, seed, args.epochs, extra))
        line = dict(recipe=recipe, seed=seed, stack=stack, split=args.split_seed, **result)
        print(f"  {recipe} seed {seed} {stack}: best {result['best']:.1f}", flush=True)
        if args.results:
            with open(args.results, "a") as fh:
                fh.write(json.dumps(line) + "\n")
        return job, result

    with ThreadPoolExecutor(args.jobs) as pool:
        done = list(pool.map(run, jobs))
    for recipe in args.recipes:
        runs: dict[str, list[dict]] = {}
        for (r, _seed, stack, _extra), result in done:
            if r == recipe:
                runs.setdefault(stack, []).append(result)
        if "mmcls" in runs and "ours" in runs:
            print(summarise(recipe, runs, label), flush=True)


def main() -> None:
    import logging

    from mmcv.utils import get_logger

    # its per-tensor init report: mmcv's get_logger keeps the level of a logger's first call
    get_logger("mmcv", log_level=logging.WARNING)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checks", nargs="*", type=int, default=[1, 2, 3, 4, 5, 6])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--ours-extra", action="append", default=None,
                   help="another variant of our runs in check 6, e.g. '--no-drop-last'")
    p.add_argument("--work", help="keep the runs here (default: a temporary folder)")
    p.add_argument("--split-seed", type=int, default=0,
                   help="which split of the digits check 6 trains on (0: the driver's)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="check 6 runs at once")
    p.add_argument("--ours-only", action="store_true", help="check 6 without mmcls's runs")
    p.add_argument("--results", help="append each check-6 run as a JSON line here")
    args = p.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(args.work or scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        if 1 in args.checks:
            check_logits(tmp)
        if 2 in args.checks:
            check_init()
        works = check_lr(tmp) if 3 in args.checks or 5 in args.checks else {}
        if 4 in args.checks:
            check_mixing()
            check_draws()
        if 5 in args.checks:
            check_checkpoints(tmp, works)
        if 6 in args.checks:
            extra = [[]] + [e.split() for e in args.ours_extra or []]
            check_training(tmp, args, extra)


if __name__ == "__main__":
    main()
