"""A run's model put together (``training/assembly.py``): --init-from starts a new run from a
file's weights (ours or mmcls's), and refuses a file of another model in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import (
    TINY,
    assert_one_line_error,
    free_port,
    model_state,
    read_summary,
    run_cli,
    run_main,
)


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.distributed
def test_sync_bn_and_accumulation_in_a_two_process_job(tmp_path: Path) -> None:
    """The wiring of --sync-bn (converted before DDP, which takes it on cpu) with
    --accum-steps and --ema-momentum in a real 2-process gloo job."""
    out = tmp_path / "run"
    proc = run_cli([*TINY, "--synthetic-train-size", "128", "--synthetic-test-size", "32",
                    "--epochs", "1", "--nproc", "2", "--port", str(free_port()), "--sync-bn",
                    "--accum-steps", "2", "--ema-momentum", "0.1", "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = read_summary(out)
    assert (summary["sync_bn"], summary["accum_steps"], summary["iterations"]) == (True, 2, 4)
    assert len(set(summary["replica_checksums"])) == 1, summary["replica_checksums"]
    log = (out / "train.log").read_text()
    assert "SyncBatchNorm: BN statistics over all 2 processes" in log
    assert "2 micro-batches of 8 per process" in log
