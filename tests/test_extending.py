"""docs/extending.md is followed literally: each test copies the package, applies the code
blocks of one walk-through where its text says (the ``<!-- extending: ... -->`` line above
each block), and runs the real command on the copy in a subprocess."""

from __future__ import annotations

import csv
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, assert_one_line_error, base_env

DOC = (REPO / "docs" / "extending.md").read_text()
# a run of seconds: ResNet-18 on 8x8 synthetic images, 64 of them, batches of 16
SMALL = ["--device", "cpu", "--dataset", "synthetic", "--synthetic-image-size", "8",
         "--synthetic-train-size", "64", "--synthetic-test-size", "32",
         "--synthetic-classes", "10", "--depth", "18", "--batch-size", "16",
         "--print-freq", "2", "--progress-bar", "off", "--num-workers", "0"]


def section(title: str) -> str:
    return DOC.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def edits(text: str) -> list[tuple[str, str]]:
    """(where, code) for every marked code block of a section, in order."""
    return re.findall(r"<!-- extending: (.*?) -->\n```python\n(.*?)```", text, re.S)


def apply(root: Path, where: str, code: str) -> None:
    """One edit as the walk-through words it: a new file, a block before an anchor (two
    blank lines after a top-level definition), or an entry inside a registry's dict."""
    if m := re.fullmatch(r"new file (\S+)", where):
        (root / m[1]).write_text(code)
        return
    m = re.fullmatch(r'before "(.*)" in (\S+)', where) or re.fullmatch(
        r"inside (\w+) in (\S+)", where)
    assert m, where
    path = root / m[2]
    text = path.read_text()
    if where.startswith("before"):
        anchor = m[1].replace("\\n", "\n")
        assert text.count(anchor) == 1, anchor
        gap = "\n\n" if code.startswith(("def ", "class ", "@")) else ""
        text = text.replace(anchor, code + gap + anchor)
    else:
        start = text.index(f"\n{m[1]}: dict[")
        end = text.index("\n}\n", start) + 1
        text = text[:end] + code + text[end:]
    path.write_text(text)


def follow(tmp_path: Path, *titles: str) -> Path:
    """A copy of the package with the walk-throughs' edits applied; returns its root."""
    root = tmp_path / "copy"
    shutil.copytree(REPO / "ignite_rn50", root / "ignite_rn50",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for title in titles:
        blocks = edits(section(title))
        assert blocks, title
        for where, code in blocks:
            apply(root, where, code)
    return root


def command(root: Path, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """``python ARGS`` with the copy first on the path (cwd too: ``-m`` looks there first)."""
    return subprocess.run([sys.executable, *args], cwd=root, env=base_env(PYTHONPATH=str(root)),
                          capture_output=True, text=True, timeout=timeout)


def test_lr_policy_walkthrough(tmp_path: Path) -> None:
    """Follows "An LR policy": linear_lr beside step_lr, its entry in POLICIES; --help lists
    it, and a run's lrs per epoch and per logged iteration are the policy's."""
    root = follow(tmp_path, "An LR policy")
    helped = command(root, ["-m", "ignite_rn50.run", "--help"])
    assert helped.returncode == 0, helped.stderr
    text = " ".join(helped.stdout.split())
    assert "--lr-policy {step,cosine,linear}" in text
    assert "linear = linear decay from --lr to --min-lr over --epochs" in text

    out = tmp_path / "run"
    proc = command(root, ["-m", "ignite_rn50.run", *SMALL, "--loggers", "--epochs", "3",
                          "--lr", "0.06", "--min-lr", "0.0", "--lr-policy", "linear",
                          "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lr_policy"] == "linear"
    expected = {1: 0.06, 2: 0.04, 3: 0.02}  # 0.06 (1 - e/3), e = 0, 1, 2
    assert {row["epoch"]: row["lr"] for row in summary["history"]} == pytest.approx(expected)
    with open(out / "train_loss.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6  # 4 iterations an epoch, one line every 2
    for row in rows:
        assert float(row["lr"]) == pytest.approx(expected[int(row["epoch"])])


def test_tracker_walkthrough(tmp_path: Path) -> None:
    """Follows "An experiment tracker": import json, JsonLinesTracker, its entry in TRACKERS;
    --loggers lists it (and takes it by default), a run with --loggers jsonl writes
    metrics.jsonl with the train, epoch and val values the run itself recorded."""
    root = follow(tmp_path, "An experiment tracker")
    helped = command(root, ["-m", "ignite_rn50.run", "--help"])
    text = " ".join(helped.stdout.split())
    assert "experiment loggers: any of tensorboard, clearml, jsonl" in text
    assert "['tensorboard', 'clearml', 'jsonl']" in text
    refused = command(root, ["-m", "ignite_rn50.run", *SMALL, "--loggers", "jsonl", "csv"])
    assert_one_line_error(refused, "--loggers accepts tensorboard, clearml, jsonl, got csv")

    out = tmp_path / "run"
    proc = command(root, ["-m", "ignite_rn50.run", *SMALL, "--epochs", "2", "--lr", "0.05",
                          "--loggers", "jsonl", "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    by_tag = {tag: [r for r in lines if r["tag"] == tag] for tag in ("train", "epoch", "val")}
    assert len(lines) == sum(map(len, by_tag.values()))
    with open(out / "train_loss.csv") as fh:
        logged = [(int(r["iteration"]), float(r["lr"])) for r in csv.DictReader(fh)]
    assert [(r["step"], r["lr"]) for r in by_tag["train"]] == logged
    history = json.loads((out / "summary.json").read_text())["history"]
    assert [r["step"] for r in by_tag["epoch"]] == [1, 2]
    assert [r["epoch_loss"] for r in by_tag["epoch"]] == pytest.approx(
        [h["train_loss"] for h in history])
    assert [(r["step"], r["top1"]) for r in by_tag["val"]] == [
        (h["epoch"], pytest.approx(h["val_top1"])) for h in history]


def _try_it(title: str) -> list[list[str]]:
    block = re.findall(r"Try it:\n\n```bash\n(.*?)```", section(title), re.S)[-1]
    return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines()]


def test_entry_point_walkthrough(tmp_path: Path) -> None:
    """Follows "An entry point": ignite_rn50/shards.py as written there; parse imports no
    torch, and its two "Try it" commands print what the text says they print."""
    root = follow(tmp_path, "An entry point")
    light = command(root, ["-c", "import sys; from ignite_rn50 import shards; "
                           "shards.parse(['--dataset', 'synthetic']); "
                           "print(sorted({'torch', 'ignite', 'numpy'} & set(sys.modules)))"])
    assert light.returncode == 0 and light.stdout.strip() == "[]", light.stdout + light.stderr

    two, bad = _try_it("An entry point")
    assert two[:3] == bad[:3] == ["python", "-m", "ignite_rn50.shards"]
    proc = command(root, two[1:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = proc.stdout.splitlines()
    assert sorted(printed[:2]) == ["process 0 of 2: 50 test images",
                                   "process 1 of 2: 50 test images"], proc.stdout
    assert printed[-1] == "images=100", proc.stdout
    refused = command(root, bad[1:])
    line = assert_one_line_error(refused)
    assert line == "ignite_rn50.shards: error: --batch-size must be positive, got 0"


def write_npz_digits(folder: Path) -> None:
    """scikit-learn's digits as the walk-through's train.npz and test.npz (8x8, RGB)."""
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.repeat((digits.images * 15.9).astype(np.uint8)[..., None], 3, axis=3)
    classes = np.array([f"digit {i}" for i in range(10)])
    folder.mkdir()
    for name, part in (("train", slice(0, 160)), ("test", slice(160, 224))):
        np.savez(folder / f"{name}.npz", images=images[part], labels=digits.target[part],
                 classes=classes)


def test_dataset_walkthrough(tmp_path: Path) -> None:
    """Follows "A dataset": data/npz.py and its registry entry; --help lists it, its split
    says no flips, a run trains on its files (through both pipelines) and names its classes,
    and a folder without its files is one line."""
    root = follow(tmp_path, "A dataset")
    helped = command(root, ["-m", "ignite_rn50.run", "--help"])
    assert "--dataset {cifar100,cifar10,synthetic,folder,npz}" in " ".join(
        helped.stdout.split()), helped.stdout[:2000]
    data = tmp_path / "npz"
    write_npz_digits(data)
    read = command(root, ["-c", "from ignite_rn50.data.readers import load_datasets; "
                          "from ignite_rn50.data.registry import DATASETS; "
                          f"tr, te = load_datasets(DATASETS['npz'], {str(data)!r}); "
                          "print(tr.flip, tuple(tr.images.shape), te.mean == tr.mean)"])
    assert read.stdout.split() == ["False", "(160,", "3,", "8,", "8)", "True"], read.stderr
    (command_line,) = _try_it("A dataset")
    args = [a.replace("DIR", str(data)).replace("runs/npz", str(tmp_path / "run"))
            for a in command_line[1:]]
    proc = command(root, [*args, *SMALL[:2], "--batch-size", "32", "--print-freq", "2",
                          "--progress-bar", "off", "--loggers", "--num-workers", "0"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["dataset"] == "npz" and summary["epochs_completed"] == 2
    assert [c["class"] for c in summary["best_per_class"]["classes"]] == [
        f"digit {i}" for i in range(10)]
    assert summary["input_pipeline"] == "device"
    proc = command(root, [*args, *SMALL[:2], "--batch-size", "32", "--progress-bar", "off",
                          "--loggers", "--num-workers", "0", "--data-pipeline", "torchvision",
                          "--epochs", "1", "--output-dir", str(tmp_path / "run-tv")])
    assert proc.returncode == 0, proc.stderr[-3000:]  # and through the other pipeline
    summary = json.loads((tmp_path / "run-tv" / "summary.json").read_text())
    assert summary["input_pipeline"] == "torchvision" and summary["epochs_completed"] == 1
    (data / "test.npz").unlink()
    refused = command(root, [*args, "--device", "cpu"])
    assert_one_line_error(refused, f"--data {data} lacks test.npz")


def test_walkthroughs_keep_ruff_and_the_structure_checks(tmp_path: Path) -> None:
    """All four walk-throughs at once, with the entry point's step 2 (``"shards"`` beside
    ``"run"`` in FLOORS and LIGHT, the top level's limit one higher) and the dataset's step
    3 (``"data.npz"`` in LIGHT): ruff stays clean and tests/test_structure.py passes on the
    copy (all but its one training run)."""
    root = follow(tmp_path, "An LR policy", "An experiment tracker", "An entry point",
                  "A dataset")
    shutil.copytree(REPO / "tests", root / "tests",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root)
    structure = root / "tests" / "test_structure.py"
    text = structure.read_text()
    assert text.count('"run", "evaluate"') == 2 and text.count("len(top) <= 10") == 1
    text = text.replace('"run", "evaluate"', '"run", "shards", "evaluate"')
    text = text.replace("len(top) <= 10", "len(top) <= 11")
    structure.write_text(text.replace('"data.registry", ', '"data.registry", "data.npz", '))
    ruff = subprocess.run([sys.executable, "-m", "ruff", "check", "ignite_rn50"], cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert ruff.returncode == 0, ruff.stdout + ruff.stderr
    checks = command(root, ["-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "tests/test_structure.py", "-k", "not train_log"], timeout=300)
    assert checks.returncode == 0, checks.stdout[-3000:]
