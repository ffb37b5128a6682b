"""A user of the ModelZoo package brings their checkpoints: ``python -m ignite_rn50.evaluate``
(``evaluate.py``) reads ours and mmcls 0.x files (prefixes, fp16 weights), and refuses a
file of another depth or class count with one line naming the first mismatching key."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import yaml

from tests.helpers import (
    DIGIT_NAMES,
    TINY,
    assert_one_line_error,
    free_port,
    read_summary,
    run_cli,
    run_main,
)

RESULT = re.compile(r"^top1=([\d.]+) top5=([\d.]+) loss=([\d.]+) images=(\d+)$")


def _evaluate(checkpoint: Path, *flags: str, env: dict[str, str] | None = None,
              timeout: float = 300) -> tuple[float, float, float, int]:
    proc = run_cli(["--checkpoint", str(checkpoint), *flags], module="ignite_rn50.evaluate",
                   env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = RESULT.match(proc.stdout.strip().splitlines()[-1])
    assert match, proc.stdout[-2000:]
    return float(match[1]), float(match[2]), float(match[3]), int(match[4])


def test_evaluates_our_checkpoint_to_the_reported_top1(trained: Path, tmp_path: Path) -> None:
    summary = read_summary(trained)
    # the run's saved config.yaml as it is: output keys and all
    top1, top5, loss, images = _evaluate(trained / "checkpoint_1.pt", "--config",
                                         str(trained / "config.yaml"), "--per-class",
                                         str(tmp_path / "classes"))
    assert images == 64
    assert top1 == pytest.approx(100 * summary["final_top1"], abs=1e-4)
    assert top5 == pytest.approx(100 * summary["final_top5"], abs=1e-4)
    assert loss == pytest.approx(summary["final_val_loss"], rel=1e-5)
    # --per-class: the classes' images and correct ones add up to the overall figures
    with open(tmp_path / "classes" / "per_class.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["index"] for r in rows] == [str(i) for i in range(10)]
    assert sum(int(r["images"]) for r in rows) == images
    correct = sum(int(r["images"]) * float(r["top1"] or 0) / 100 for r in rows)
    assert 100 * correct / images == pytest.approx(top1, abs=1e-3)
    with open(tmp_path / "classes" / "confusion.csv") as fh:
        table = list(csv.reader(fh))
    assert table[0][1:] == [r["class"] for r in rows] and len(table) == 11
    counts = [[int(v) for v in row[1:]] for row in table[1:]]
    assert sum(map(sum, counts)) == images
    assert [counts[i][i] for i in range(10)] == [round(int(r["images"]) * float(r["top1"] or 0)
                                                       / 100) for r in rows]
    # the run's summary holds the best epoch's per-class top-1: this very evaluation's
    best = summary["best_per_class"]
    assert best["epoch"] == 1
    assert [c["top1"] for c in best["classes"] if c["images"]] == pytest.approx(
        [float(r["top1"]) for r in rows if int(r["images"])], abs=1e-3)
    pairs = best["most_confused"]
    assert pairs and pairs[0]["images"] == max(counts[i][j] for i in range(10)
                                               for j in range(10) if i != j)


def test_per_class_folder_that_is_a_file_is_refused(trained: Path, tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("mine")
    proc = run_cli(["--checkpoint", str(trained / "checkpoint_1.pt"), "--config",
                    str(trained / "config.yaml"), "--per-class", str(tmp_path / "taken")],
                   module="ignite_rn50.evaluate")
    assert_one_line_error(proc, "--per-class", "is a file")
    assert (tmp_path / "taken").read_text() == "mine"


def test_training_only_keys_of_a_config_are_unused(trained: Path, tmp_path: Path) -> None:
    """A run's config may ask for what evaluation cannot or need not do (a CUDA graph, apex,
    resuming): evaluation on this CPU ignores those keys."""
    config = yaml.safe_load((trained / "config.yaml").read_text())
    config.update(graph=True, amp_backend="apex", resume="auto", compile=True,
                  init_from=str(tmp_path / "missing.pt"))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    top1, _, _, images = _evaluate(trained / "checkpoint_1.pt", "--config",
                                   str(tmp_path / "config.yaml"))
    assert images == 64
    assert top1 == pytest.approx(100 * read_summary(trained)["final_top1"], abs=1e-4)


@pytest.mark.parametrize("name", ["mmcls_fp32.pth", "mmcls_fp16_ddp.pth"])
def test_evaluates_mmcls_layout_to_the_same_top1(trained: Path, name: str) -> None:
    top1, _, _, images = _evaluate(trained / name, "--config", str(trained / "config.yaml"))
    assert images == 64
    assert top1 == pytest.approx(100 * read_summary(trained)["final_top1"], abs=1e-4)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_count_each_image_once(trained: Path) -> None:
    top1, top5, loss, images = _evaluate(
        trained / "mmcls_fp32.pth", *TINY, "--nproc", "2", "--synthetic-test-size", "63",
        "--port", str(free_port()), timeout=600)
    one = _evaluate(trained / "mmcls_fp32.pth", *TINY, "--synthetic-test-size", "63")
    assert images == 63 == one[3]
    assert (top1, top5) == pytest.approx(one[:2], abs=1e-4)
    assert loss == pytest.approx(one[2], rel=1e-5)


@pytest.mark.parametrize("flags, needle", [
    (["--depth", "34"], "the file lacks 'layer1.2.conv1.weight'"),
    (["--synthetic-classes", "12"], "'fc.weight' has shape [10, 512] in the file, [12, 512]"),
])
def test_file_of_another_model_is_refused(trained: Path, flags: list[str], needle: str) -> None:
    for name in ("checkpoint_1.pt", "mmcls_fp16_ddp.pth"):
        proc = run_main(["--checkpoint", str(trained / name), *TINY, *flags],
                        module="ignite_rn50.evaluate")
        assert_one_line_error(proc, f"--checkpoint {trained / name}", needle)


@pytest.mark.slow
def test_evaluate_and_init_from_on_standin_npu(trained: Path, tmp_path: Path,
                                               standin_env: dict[str, str]) -> None:
    top1, _, _, images = _evaluate(trained / "mmcls_fp16_ddp.pth", *TINY, "--device", "npu",
                                   "--no-amp", env=standin_env, timeout=600)
    assert images == 64
    assert top1 == pytest.approx(100 * read_summary(trained)["final_top1"], abs=1e-4)
    out = tmp_path / "npu"
    proc = run_cli([*TINY, "--device", "npu", "--no-amp", "--epochs", "1", "--max-iters", "2",
                    "--init-from", str(trained / "checkpoint_1.pt"), "--output-dir", str(out)],
                   env=standin_env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_summary(out)["step_device"] == "npu:0" and "initialised from" in proc.stdout


@pytest.mark.slow
def test_weights_ema_or_raw_score_as_the_run_did(ema_runs: tuple[Path, Path]) -> None:
    """A checkpoint of a run with --ema-momentum: the EMA by default (and --weights ema),
    the trained model with --weights raw; each scores what the run logged for it."""
    whole, _ = ema_runs
    last = read_summary(whole)["history"][-1]
    base = ["--checkpoint", str(whole / "checkpoint_2.pt"), "--config", str(whole / "config.yaml")]
    for flags, key in (([], "val_ema_top1"), (["--weights", "ema"], "val_ema_top1"),
                       (["--weights", "raw"], "val_top1")):
        proc = run_main([*base, *flags], module="ignite_rn50.evaluate")
        assert proc.returncode == 0, proc.stderr[-2000:]
        match = RESULT.match(proc.stdout.strip().splitlines()[-1])
        assert match and float(match[1]) == pytest.approx(100 * last[key], abs=1e-4), flags
    assert last["val_ema_top1"] != last["val_top1"] or last["val_ema_loss"] != last["val_loss"]


def test_weights_ema_of_a_file_without_ema_is_refused(trained: Path) -> None:
    proc = run_main(["--checkpoint", str(trained / "checkpoint_1.pt"), *TINY[:12],
                     "--weights", "ema"], module="ignite_rn50.evaluate")
    assert_one_line_error(proc, "--weights ema", "holds no EMA weights", "--weights raw")


def test_per_class_of_a_folder_trained_checkpoint_names_its_classes(trained_folder: Path,
                                                                     tmp_path: Path) -> None:
    """The digits as image files: the run's config and its last checkpoint are all evaluate
    needs; the per-class files name the folders' classes and add up to the overall top-1."""
    summary = read_summary(trained_folder)
    proc = run_main(["--checkpoint", str(trained_folder / "checkpoint_4.pt"), "--config",
                     str(trained_folder / "config.yaml"), "--per-class", str(tmp_path / "pc")],
                    module="ignite_rn50.evaluate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = RESULT.match(proc.stdout.strip().splitlines()[-1])
    assert match, proc.stdout[-2000:]
    top1, images = float(match[1]), int(match[4])
    assert top1 == pytest.approx(100 * summary["final_top1"], abs=1e-4) and images == 160
    with open(tmp_path / "pc" / "per_class.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["class"] for r in rows] == sorted(DIGIT_NAMES)
    assert sum(int(r["images"]) for r in rows) == images
    correct = sum(int(r["images"]) * float(r["top1"] or 0) / 100 for r in rows)
    assert 100 * correct / images == pytest.approx(top1, abs=1e-3)
