"""Multi-process runs for real (``system/distributed.py``): idist.Parallel spawns (gloo),
torchrun, the HCCL model on the NPU stand-in, exact distributed evaluation, resume, a busy
or unreachable master, and a killed rank taking the job down."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ignite_rn50.data import pipelines
from ignite_rn50.data.readers import make_synthetic
from ignite_rn50.model.resnet import build_model
from ignite_rn50.system.precision import Precision
from ignite_rn50.training.step import create_evaluator
from tests.helpers import (
    REPO,
    TINY,
    assert_one_line_error,
    base_env,
    free_port,
    model_state,
    read_summary,
    run_cli,
)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_gloo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    proc = run_cli([*TINY, "--nproc", "2", "--port", str(free_port()),
                    "--synthetic-train-size", "512", "--synthetic-test-size", "101",
                    "--output-dir", str(out)], timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = read_summary(out)
    assert summary["world_size"] == 2 and summary["global_batch_size"] == 32
    assert summary["backend"] == "gloo" and summary["rank_devices"] == ["cpu", "cpu"]
    checksums = summary["replica_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    assert summary["final_top1"] > 0.2  # chance 0.1
    # 512 images / global 32 -> 16 iterations per epoch on every rank
    assert summary["iterations"] == 32
    # rank 0 alone logs
    assert proc.stdout.count("Epoch [2/2] done") == 1

    # evaluation counted each of the 101 test images once: equal to one process evaluating
    # the same weights
    state = model_state(out / "checkpoint_2.pt")
    model = build_model(18, 10)
    model.load_state_dict(state)
    test = make_synthetic(101, 10, 8, split_seed=2)
    evaluator = create_evaluator(model, torch.nn.CrossEntropyLoss(), torch.device("cpu"),
                                 Precision(False, None, "native"), num_classes=10)
    evaluator.run(pipelines.device_eval_batches(test, torch.device("cpu"), 16, rank=0,
                                               world_size=1))
    assert evaluator.state.metrics["top1"] == pytest.approx(summary["final_top1"], abs=1e-9)
    assert evaluator.state.metrics["top1"] * 101 == pytest.approx(
        round(evaluator.state.metrics["top1"] * 101))
    assert evaluator.state.metrics["loss"] == pytest.approx(summary["final_val_loss"], rel=1e-5)
    # the confusion matrix, all-reduced once: both shards' images, each class's top-1 adding
    # up to the best epoch's
    best = summary["best_per_class"]["classes"]
    assert sum(c["images"] for c in best) == 101
    correct = sum(c["images"] * c["top1"] / 100 for c in best if c["images"])
    assert correct / 101 == pytest.approx(summary["best_top1"], abs=1e-6)

    # resume the 2-process run for one more epoch
    proc = run_cli([*TINY, "--nproc", "2", "--port", str(free_port()), "--epochs", "3",
                    "--synthetic-train-size", "512", "--synthetic-test-size", "101",
                    "--output-dir", str(out), "--resume", "auto"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resumed from" in proc.stdout
    summary = read_summary(out)
    assert summary["epochs_completed"] == 3 and summary["iterations"] == 48


PG_THREADS = ("pt_gloo_runloop", "gloo_tcp_loop", "pt_tcpstore_uv")


@pytest.mark.slow
@pytest.mark.distributed
def test_ranks_end_with_no_process_group_thread_alive(tmp_path: Path) -> None:
    """The cause of the random abort ("terminate called without an active exception",
    status -6): gloo threads outliving the process group into interpreter shutdown, where
    one that must take the GIL is ended by Python. At exit no rank may have one left."""
    probe = tmp_path / "threads"
    probe.mkdir()
    proc = run_cli([str(probe), *TINY, "--nproc", "2", "--epochs", "1", "--port",
                    str(free_port()), "--output-dir", str(tmp_path / "o")],
                   module="tests.rank_probe", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        threads = (probe / f"rank{rank}.txt").read_text().split()
        assert threads, rank
        assert not set(threads) & set(PG_THREADS), (rank, threads)


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_joins_existing_group(tmp_path: Path) -> None:
    out = tmp_path / "trun"
    env = base_env()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(free_port()), "-m", "ignite_rn50.run", *TINY, "--epochs", "1",
           "--output-dir", str(out)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = read_summary(out)
    assert summary["world_size"] == 2 and summary["backend"] == "gloo"
    assert summary["replica_checksums"][0] == summary["replica_checksums"][1]


@pytest.mark.slow
@pytest.mark.distributed
def test_npu_two_processes_hccl_on_standin(tmp_path: Path, standin_env: dict[str, str]) -> None:
    out = tmp_path / "hccl"
    # fp32: the stand-in's fp16 kernels take ~10 s a step (the 1-process test covers AMP)
    proc = run_cli([*TINY, "--device", "npu", "--no-amp", "--nproc", "2", "--epochs", "1",
                    "--max-iters", "3", "--port", str(free_port()), "--output-dir", str(out)],
                   env=standin_env,
                   timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = read_summary(out)
    assert summary["backend"] == "hccl"
    assert summary["rank_devices"] == ["npu:0", "npu:1"]
    assert summary["device"] == "npu:0" and summary["step_device"] == "npu:0"
    # identical replicas after DDP steps: gradients were all-reduced over hccl
    checksums = summary["replica_checksums"]
    assert checksums[0] == checksums[1]
    assert summary["world_size"] == 2 and summary["amp"] == "fp32"


@pytest.mark.slow
def test_more_processes_than_devices_is_clear(standin_env: dict[str, str],
                                              tmp_path: Path) -> None:
    env = dict(standin_env, FAKENPU_DEVICE_COUNT="2")
    proc = run_cli([*TINY, "--device", "npu", "--nproc", "4", "--output-dir",
                    str(tmp_path / "o")], env=env, timeout=300)
    assert proc.returncode == 2 and "only 2 are visible" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_unreachable_master_is_clear(tmp_path: Path) -> None:
    proc = run_cli([*TINY, "--nproc", "1", "--world-size", "2", "--node-rank", "1",
                    "--addr", "127.0.0.1", "--port", str(free_port()), "--dist-timeout", "3",
                    "--output-dir", str(tmp_path / "o")], timeout=120)
    assert proc.returncode == 2 and "unreachable" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.slow
@pytest.mark.distributed
def test_killed_rank_takes_job_down_within_60s(tmp_path: Path) -> None:
    out = tmp_path / "kill"
    args = [sys.executable, "-m", "ignite_rn50.run", *TINY, "--nproc", "2", "--epochs", "50",
            "--port", str(free_port()), "--print-freq", "1", "--output-dir", str(out)]
    proc = subprocess.Popen(args, env=base_env(), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 240
    for line in proc.stdout:
        if re.search(r"Epoch \[1/50\] Iter \[2/", line):
            break
        assert time.monotonic() < deadline
    ranks = [p for p in _children(proc.pid)
             if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text(errors="ignore")]
    assert len(ranks) == 2, ranks
    os.kill(ranks[1], signal.SIGKILL)
    killed = time.monotonic()
    try:
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - killed < 60
    assert rc != 0
    for pid in ranks:
        assert not Path(f"/proc/{pid}").exists() or \
            "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


@pytest.mark.slow
def test_master_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_cli([*TINY, "--nproc", "2", "--port", str(port), "--output-dir",
                        str(tmp_path / "o")])
    assert_one_line_error(proc, f"--port {port} is already in use")
