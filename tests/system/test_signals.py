"""SIGTERM and SIGINT (``system/signals.py``): a run stops at a step, saves and resumes as if
never stopped; a job's ranks agree on where to stop and which signal it was; a second
Ctrl-C ends a job at once; Ctrl-C during evaluation is one line and status 130."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import (
    REPO,
    TINY,
    base_env,
    free_port,
    model_state,
    popen_run,
    run_main,
    wait_for,
)


@pytest.mark.slow
def test_sigterm_saves_and_resume_equals_uninterrupted(tmp_path: Path) -> None:
    args = [*TINY, "--epochs", "2", "--print-freq", "1"]
    full = tmp_path / "full"
    assert run_main([*args, "--output-dir", str(full)]).returncode == 0
    out = tmp_path / "t"
    proc = popen_run([*args, "--output-dir", str(out)])
    wait_for(proc, r"Epoch \[1/2\] Iter \[3/")
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, rest
    line = [ln for ln in rest.splitlines() if "stopped by SIGTERM" in ln]
    assert line and "--resume auto" in line[0]
    saved = list(out.glob("interrupted_checkpoint_*.pt"))
    assert len(saved) == 1
    step = int(re.search(r"_(\d+)\.pt", saved[0].name)[1])
    assert 3 <= step < 8  # mid-epoch 1 (8 iterations an epoch)
    done = run_main([*args, "--output-dir", str(out), "--resume", "auto"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list(out.glob("interrupted_checkpoint_*.pt"))  # superseded by epoch saves
    # mid-epoch resume replays exactly the remaining batches: same weights as no stop
    a, b = model_state(full / "checkpoint_2.pt"), model_state(out / "checkpoint_2.pt")
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
@pytest.mark.distributed
def test_sigterm_to_launcher_stops_all_ranks_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "ddp-term"
    proc = popen_run([*TINY, "--nproc", "2", "--epochs", "20", "--print-freq", "2",
                   "--port", str(free_port()), "--output-dir", str(out)])
    wait_for(proc, r"Epoch \[1/20\] Iter \[4/")
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, rest[-3000:]
    assert "stopped by SIGTERM" in rest and "--resume auto" in rest
    saved = list(out.glob("interrupted_checkpoint_*.pt"))
    assert len(saved) == 1
    state = torch.load(saved[0], map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] % 2 == 0  # ranks agreed at a print boundary


@pytest.mark.slow
@pytest.mark.distributed
def test_sigint_to_one_rank_stops_every_rank_with_its_name(tmp_path: Path) -> None:
    """Only rank 1 receives SIGINT; rank 0 learns at the agreed step which signal it was."""
    out = tmp_path / "int1"
    proc = popen_run([*TINY, "--nproc", "2", "--epochs", "20", "--print-freq", "2",
                   "--port", str(free_port()), "--output-dir", str(out)])
    wait_for(proc, r"Epoch \[1/20\] Iter \[4/")
    ranks = _rank_pids(proc.pid)
    os.kill(ranks[1], signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, rest[-3000:]
    assert "stopped by SIGINT at epoch 1" in rest and "SIGTERM" not in rest


@pytest.mark.slow
@pytest.mark.distributed
def test_ctrl_c_on_a_spawned_job(tmp_path: Path) -> None:
    """First Ctrl-C (SIGINT to the launcher): the ranks stop at an agreed step and save, exit
    0. A second one more than 2 s later stops the job at once: status 130, no rank left."""
    out = tmp_path / "int"
    args = [*TINY, "--nproc", "2", "--epochs", "50", "--port", str(free_port())]
    proc = popen_run([*args, "--print-freq", "2", "--output-dir", str(out)])
    wait_for(proc, r"Epoch \[1/50\] Iter \[4/")
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, rest[-3000:]
    assert "stopped by SIGINT" in rest and len(list(out.glob("interrupted_*.pt"))) == 1

    # --print-freq beyond the run: the ranks never reach a point where they could agree
    proc = popen_run([*args, "--print-freq", "100000", "--output-dir", str(tmp_path / "int2")])
    wait_for(proc, r"training ResNet")
    ranks = _rank_pids(proc.pid)
    proc.send_signal(signal.SIGINT)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, rest[-3000:]
    assert rest.strip().splitlines()[-1] == "ignite_rn50: interrupted"
    assert "Traceback" not in rest
    for pid in ranks:
        assert not Path(f"/proc/{pid}").exists() or \
            "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


def _rank_pids(launcher: int) -> list[int]:
    """The launcher's spawned ranks, in rank order (spawned one after the other: by pid)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(launcher)], capture_output=True,
                         text=True).stdout
    pids = [int(p) for p in out.split()
            if "spawn_main" in Path(f"/proc/{p.strip()}/cmdline").read_text(errors="ignore")]
    assert len(pids) == 2, pids
    return sorted(pids)


@pytest.mark.slow
def test_ctrl_c_during_evaluate_is_one_line_and_130(trained: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "ignite_rn50.evaluate", "--checkpoint",
                             str(trained / "checkpoint_1.pt"), *TINY, "--synthetic-test-size",
                             "200000", "--eval-batch-size", "16"],
                            env=base_env(PYTHONFAULTHANDLER="1"), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("evaluating "), first
    time.sleep(1)
    signals = [line for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
               if line.startswith(("SigBlk", "SigIgn", "SigCgt"))]
    proc.send_signal(signal.SIGINT)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # where it is: faulthandler's dump on SIGABRT
        proc.send_signal(signal.SIGABRT)
        stdout, stderr = proc.communicate(timeout=30)
        raise AssertionError(f"SIGINT ignored for 120 s; {signals}\n{stderr[-6000:]}") from None
    assert proc.returncode == 130, (stdout[-2000:], stderr[-2000:])
    assert stderr.strip().splitlines() == ["ignite_rn50.evaluate: interrupted"], stderr
