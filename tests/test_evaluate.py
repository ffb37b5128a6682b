"""A user of the ModelZoo package brings their checkpoints: ``python -m ignite_rn50.evaluate``
and ``--init-from`` read ours and mmcls 0.x files (prefixes, fp16 weights), and refuse a file
of another depth or class count with one line naming the first mismatching key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from ignite_rn50.model.weights import to_mmcls

from .conftest import (
    TINY,
    assert_one_line_error,
    free_port,
    model_state,
    read_summary,
    run_cli,
    run_main,
)

RESULT = re.compile(r"^top1=([\d.]+) top5=([\d.]+) loss=([\d.]+) images=(\d+)$")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny epoch; its checkpoint, in our layout and re-laid as mmcls would save it."""
    out = tmp_path_factory.mktemp("trained") / "run"
    proc = run_main([*TINY, "--epochs", "1", "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = model_state(out / "checkpoint_1.pt")
    meta = {"epoch": 1, "iter": 8, "mmcls_version": "0.23.2", "mmcv_version": "1.7.0",
            "config": "model = dict(type='ImageClassifier')", "CLASSES": ("a", "b"),
            "time": "Sun Nov 29 12:00:00 2026"}
    mmcls = to_mmcls(state)
    # apex O2 keeps BN in fp32 and casts convolutions and the classifier to fp16
    fp16 = {k: v.half() if v.is_floating_point() and "bn" not in k and "downsample.1" not in k
            else v for k, v in mmcls.items()}
    torch.save({"meta": meta, "state_dict": mmcls, "optimizer": {}}, out / "mmcls_fp32.pth")
    torch.save({"meta": meta, "state_dict": {"module." + k: v for k, v in fp16.items()}},
               out / "mmcls_fp16_ddp.pth")
    return out


def _evaluate(checkpoint: Path, *flags: str, env: dict[str, str] | None = None,
              timeout: float = 300) -> tuple[float, float, float, int]:
    proc = run_cli(["--checkpoint", str(checkpoint), *flags], module="ignite_rn50.evaluate",
                   env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = RESULT.match(proc.stdout.strip().splitlines()[-1])
    assert match, proc.stdout[-2000:]
    return float(match[1]), float(match[2]), float(match[3]), int(match[4])


def test_evaluates_our_checkpoint_to_the_reported_top1(trained: Path) -> None:
    summary = read_summary(trained)
    # the run's saved config.yaml as it is: output keys and all
    top1, top5, loss, images = _evaluate(trained / "checkpoint_1.pt", "--config",
                                         str(trained / "config.yaml"))
    assert images == 64
    assert top1 == pytest.approx(100 * summary["final_top1"], abs=1e-4)
    assert top5 == pytest.approx(100 * summary["final_top5"], abs=1e-4)
    assert loss == pytest.approx(summary["final_val_loss"], rel=1e-5)


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


def test_init_from_starts_a_new_run_from_the_weights(trained: Path, tmp_path: Path) -> None:
    """Model weights only: the trainer's epoch count, optimizer and schedule start fresh."""
    start = model_state(trained / "checkpoint_1.pt")
    out = tmp_path / "init"
    proc = run_cli([*TINY, "--epochs", "1", "--lr", "1e-12", "--init-from",
                    str(trained / "mmcls_fp32.pth"), "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "initialised from" in proc.stdout and "mmcls layout" in proc.stdout
    saved = torch.load(out / "checkpoint_1.pt", map_location="cpu", weights_only=True)
    assert saved["trainer"]["iteration"] == 8  # this run's own first epoch, not the file's
    for key in ("conv1.weight", "layer4.1.conv2.weight", "fc.weight"):
        assert torch.allclose(saved["model"][key], start[key], atol=1e-6), key
    # a run from scratch with the same seed has other weights: the file's were used
    scratch = tmp_path / "scratch"
    assert run_cli([*TINY, "--epochs", "1", "--lr", "1e-12", "--output-dir",
                    str(scratch)]).returncode == 0
    assert not torch.allclose(model_state(scratch / "checkpoint_1.pt")["conv1.weight"],
                              start["conv1.weight"], atol=1e-3)


def test_init_from_a_file_of_another_model_is_refused(trained: Path, tmp_path: Path) -> None:
    proc = run_main([*TINY, "--depth", "34", "--init-from", str(trained / "mmcls_fp32.pth"),
                    "--output-dir", str(tmp_path / "o")])
    assert_one_line_error(proc, "--init-from", "mmcls layout", "lacks 'layer1.2.conv1.weight'")


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
