"""``python -m ignite_rn50.run`` (``run.py``) end to end, single process: a run learns and
writes everything, channels-last, and the NPU path on the stand-in."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import TINY, base_env, read_summary, run_cli, run_main


@pytest.mark.slow
def test_two_epoch_run_learns_and_writes_everything(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_main([*TINY, "--synthetic-train-size", "512", "--synthetic-test-size", "128",
                    "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = read_summary(out)
    assert summary["epochs_completed"] == 2 and summary["world_size"] == 1
    assert summary["global_batch_size"] == 32 and summary["device"] == "cpu"
    assert summary["final_top1"] > 0.25, summary  # chance is 0.10 with 10 classes
    assert summary["best_top1"] >= summary["final_top1"]
    assert summary["fps"] > 0 and 0 <= summary["data_wait_share"] < 1
    for key in ("final_top5", "final_loss", "e2e_seconds", "amp"):
        assert summary[key] is not None
    assert sorted(p.name for p in out.glob("checkpoint_*.pt")) == ["checkpoint_1.pt",
                                                                   "checkpoint_2.pt"]
    assert len(list(out.glob("best_checkpoint_*_top1=*.pt"))) == 1
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert yaml.safe_load((out / "config.yaml").read_text())["epochs"] == 2
    log = (out / "train.log").read_text()
    assert re.search(r"Epoch \[2/2\] Iter \[16/16\] loss [\d.]+ lr [\d.]+ [\d.]+ img/s", log)
    assert "top-1" in log
    # one log line per --print-freq iterations: 16 iterations / 4 per epoch
    assert log.count("Epoch [1/2] Iter") == 4
    state = torch.load(out / "checkpoint_2.pt", map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "trainer", "record"} <= set(state)
    assert state["trainer"]["iteration"] == 32


def test_channels_last_trains_in_channels_last(tmp_path: Path) -> None:
    out = tmp_path / "cl"
    proc = run_main([*TINY, "--epochs", "1", "--channels-last", "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = read_summary(out)
    assert summary["epochs_completed"] == 1
    assert summary["step_channels_last"] is True  # what the train step was really fed
    state = torch.load(out / "checkpoint_1.pt", map_location="cpu", weights_only=True)
    assert state["model"]["layer1.0.conv1.weight"].shape == (64, 64, 3, 3)


@pytest.mark.slow
def test_npu_path_on_standin(tmp_path: Path, standin_env: dict[str, str]) -> None:
    out = tmp_path / "npu"
    # fp16 convolutions are ~10 s a step on the stand-in: two steps an epoch, tiny eval
    args = [*TINY, "--device", "npu", "--amp", "--epochs", "1", "--batch-size", "8",
            "--max-iters", "2", "--synthetic-test-size", "16", "--eval-batch-size", "16",
            "--output-dir", str(out)]
    proc = run_cli(args, env=standin_env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = read_summary(out)
    assert summary["device"] == "npu:0" and summary["step_device"] == "npu:0"
    assert summary["step_dtype"] == "torch.float16" and summary["amp"] == "float16"
    state = torch.load(out / "checkpoint_1.pt", map_location="cpu", weights_only=True)
    assert "scaler" in state and state["scaler"]["scale"] > 0
    head = (out / "train.log").read_text().splitlines()[:4]
    assert re.search(r"versions: .*torch_npu \S+standin, cann unknown", head[1]), head
    assert re.search(r"device: npu:0 FakeNPU \(CPU stand-in\) 0 x 2, backend none", head[2])
    assert head[3].endswith("precision: native autocast float16, dynamic loss scale")

    proc = run_cli([*args, "--epochs", "2", "--resume", "auto"], env=standin_env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout and read_summary(out)["epochs_completed"] == 2

    # a CPU-only process (no torch_npu anywhere) loads the NPU checkpoint
    code = ("import sys, torch; s = torch.load(sys.argv[1], map_location='cpu', "
            "weights_only=True); import importlib.util as u; "
            "assert u.find_spec('torch_npu') is None; "
            "w = s['model']['fc.weight']; print(w.device, w.dtype, tuple(w.shape))")
    cpu = subprocess.run([sys.executable, "-c", code, str(out / "checkpoint_2.pt")],
                         env=base_env(), capture_output=True, text=True, timeout=120)
    assert cpu.returncode == 0, cpu.stderr[-2000:]
    assert cpu.stdout.split() == ["cpu", "torch.float32", "(10,", "512)"]
