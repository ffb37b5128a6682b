"""Crash-safe resume, retention, mismatched checkpoints, signals, NaN, hostile input."""

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

from ignite_rn50.training.checkpoints import find_latest_checkpoint

from .conftest import (
    REPO,
    TINY,
    assert_one_line_error,
    base_env,
    free_port,
    model_state,
    read_summary,
    run_cli,
    run_main,
)


def _popen(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ignite_rn50.run", *args],
                            env=env or base_env(), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for(proc: subprocess.Popen, pattern: str, timeout: float = 240) -> list[str]:
    assert proc.stdout is not None
    seen, deadline = [], time.monotonic() + timeout
    for line in proc.stdout:
        seen.append(line)
        if re.search(pattern, line):
            return seen
        assert time.monotonic() < deadline, "".join(seen[-20:])
    raise AssertionError("process ended before: " + pattern + "\n" + "".join(seen[-20:]))


def test_kill_9_then_resume_auto_finishes(tmp_path: Path) -> None:
    out = tmp_path / "k"
    args = [*TINY, "--epochs", "3", "--print-freq", "1", "--output-dir", str(out)]
    proc = _popen(args)
    _wait_for(proc, r"Epoch \[2/3\] Iter \[3/")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    # leftovers of a killed save, and a broken file with a checkpoint's name, are not taken
    (out / "tmpabc123").write_bytes(b"partial")
    (out / "checkpoint_99.pt").write_bytes(b"\x80\x02garbage")
    latest = find_latest_checkpoint(out)
    assert latest is not None and latest.name == "checkpoint_1.pt"
    (out / "checkpoint_99.pt").unlink()
    # the killed run's lock file stays, naming it; its OS lock died with it
    assert f'"pid": {proc.pid}' in (out / ".ignite_rn50.lock").read_text()
    done = run_main([*args, "--resume", "auto"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "checkpoint_1.pt" in done.stdout
    summary = read_summary(out)
    assert summary["epochs_completed"] == 3 and summary["iterations"] == 24


def test_retention_bounded_across_resumes(tmp_path: Path) -> None:
    out = tmp_path / "r"
    args = [*TINY, "--keep-checkpoints", "2", "--output-dir", str(out)]
    assert run_main([*args, "--epochs", "3"]).returncode == 0
    assert run_main([*args, "--epochs", "5", "--resume", "auto"]).returncode == 0
    names = sorted(p.name for p in out.glob("*.pt"))
    assert [n for n in names if n.startswith("checkpoint_")] == ["checkpoint_4.pt",
                                                                 "checkpoint_5.pt"]
    assert len([n for n in names if n.startswith("best_")]) == 1 and len(names) == 3


def test_resume_of_finished_run_does_nothing_and_older_resume_abandons_newer(
        tmp_path: Path) -> None:
    out = tmp_path / "f"
    args = [*TINY, "--keep-checkpoints", "3", "--epochs", "3", "--output-dir", str(out)]
    assert run_cli(args).returncode == 0
    def results() -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in out.iterdir()
                if p.suffix == ".pt" or p.name in ("summary.json", "curves.png")}

    before = results()
    again = run_main([*args, "--resume", "auto"])
    assert again.returncode == 0 and "already complete" in again.stdout
    assert results() == before

    older = run_main([*args, "--resume", str(out / "checkpoint_1.pt")])
    assert older.returncode == 0, older.stderr[-3000:]
    assert (out / "checkpoint_3.pt.abandoned").is_file()
    assert (out / "checkpoint_3.pt").is_file()  # saving went on past the abandoned points
    assert read_summary(out)["epochs_completed"] == 3


def test_mismatched_checkpoint_is_named(tmp_path: Path) -> None:
    """Refused before anything is written: the folder's config.yaml stays the run's."""
    out = tmp_path / "m"
    assert run_main([*TINY, "--epochs", "1", "--output-dir", str(out)]).returncode == 0
    config = (out / "config.yaml").read_text()
    proc = run_main([*TINY, "--epochs", "2", "--depth", "34", "--output-dir", str(out),
                    "--resume", "auto"])
    assert_one_line_error(proc, "does not match this run", "depth: checkpoint has 18")
    proc = run_main([*TINY, "--epochs", "2", "--synthetic-classes", "12",
                    "--output-dir", str(out), "--resume", "auto"])
    assert_one_line_error(proc, "num_classes: checkpoint has 10, this run 12")
    proc = run_main([*TINY, "--epochs", "2", "--batch-size", "16", "--output-dir",
                             str(out), "--resume", "auto"])
    assert_one_line_error(proc, "8 iterations per epoch, this run has 16")
    assert (out / "config.yaml").read_text() == config
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert_one_line_error(run_main([*TINY, "--output-dir", str(tmp_path / "n"),
                                            "--resume", str(bad)]), "not a loadable checkpoint")
    assert_one_line_error(run_main([*TINY, "--output-dir", str(tmp_path / "n2"),
                                            "--resume", str(tmp_path / "missing.pt")]),
                          "no such file")


def test_sigterm_saves_and_resume_equals_uninterrupted(tmp_path: Path) -> None:
    args = [*TINY, "--epochs", "2", "--print-freq", "1"]
    full = tmp_path / "full"
    assert run_main([*args, "--output-dir", str(full)]).returncode == 0
    out = tmp_path / "t"
    proc = _popen([*args, "--output-dir", str(out)])
    _wait_for(proc, r"Epoch \[1/2\] Iter \[3/")
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


def test_nan_loss_stops_with_epoch_and_iteration(tmp_path: Path) -> None:
    out = tmp_path / "nan"
    proc = run_main([*TINY, "--lr", "1e12", "--epochs", "3", "--print-freq", "1",
                    "--output-dir", str(out)])
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    line = [ln for ln in proc.stdout.splitlines() if "NaN/inf" in ln]
    assert len(line) == 1 and re.search(r"loss became NaN/inf at epoch 1, iteration [1-8]\b",
                                        line[0]), proc.stdout[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not list(out.glob("*.pt"))  # the diverged epoch was neither evaluated nor saved
    assert read_summary(out)["epochs_completed"] == 0


def test_output_dir_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(run_main([*TINY, "--output-dir", str(blocker / "sub")]),
                          "--output-dir", "not writable")


def test_master_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_cli([*TINY, "--nproc", "2", "--port", str(port), "--output-dir",
                        str(tmp_path / "o")])
    assert_one_line_error(proc, f"--port {port} is already in use")


@pytest.mark.parametrize("args, needle", [
    (["--device", "npu"], "needs torch_npu"),
    (["--device", "cuda"], "no CUDA GPU"),
    (["--amp-backend", "apex"], "needs --device npu or cuda"),
    (["--data-pipeline", "device", "--batch-size", "512"], "fewer than the per-process batch"),
])
def test_devices_and_sizes_absent(tmp_path: Path, args: list[str], needle: str) -> None:
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    if "npu" in args:  # a real process: nothing of torch_npu may come into this one
        proc = run_cli([*TINY, *args, "--output-dir", str(tmp_path / "o")])
    else:
        proc = run_main([*TINY, *args, "--output-dir", str(tmp_path / "o")])
    assert_one_line_error(proc, needle)


def test_npu_card_out_of_range_and_apex_missing(tmp_path: Path,
                                                standin_env: dict[str, str]) -> None:
    assert_one_line_error(run_cli([*TINY, "--device", "npu", "--gpu-id", "5", "--output-dir",
                                   str(tmp_path / "o")], env=standin_env), "--gpu-id 5 is out")
    assert_one_line_error(run_cli([*TINY, "--device", "npu", "--amp-backend", "apex",
                                   "--output-dir", str(tmp_path / "o")], env=standin_env),
                          "needs apex")


def test_empty_data_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_main([*TINY, "--dataset", "cifar100", "--data",
                                   str(tmp_path / "empty"), "--output-dir",
                                   str(tmp_path / "o")]), "holds no CIFAR-100", "nothing")


def test_sigterm_to_launcher_stops_all_ranks_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "ddp-term"
    proc = _popen([*TINY, "--nproc", "2", "--epochs", "20", "--print-freq", "2",
                   "--port", str(free_port()), "--output-dir", str(out)])
    _wait_for(proc, r"Epoch \[1/20\] Iter \[4/")
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, rest[-3000:]
    assert "stopped by SIGTERM" in rest and "--resume auto" in rest
    saved = list(out.glob("interrupted_checkpoint_*.pt"))
    assert len(saved) == 1
    state = torch.load(saved[0], map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] % 2 == 0  # ranks agreed at a print boundary


def test_second_run_on_a_busy_output_dir_stops_and_touches_nothing(tmp_path: Path) -> None:
    out = tmp_path / "busy"
    args = [*TINY, "--epochs", "3", "--print-freq", "1", "--output-dir", str(out)]
    first = _popen(args)
    try:
        _wait_for(first, r"Epoch \[1/3\] Iter \[1/")  # training (most likely no checkpoint
        first.send_signal(signal.SIGSTOP)  # yet; --resume auto passes that check anyway)
        for extra in ([], ["--resume", "auto"]):
            second = run_cli([*args, *extra])
            line = assert_one_line_error(second, f"--output-dir {out} is in use by another "
                                                 f"run (pid {first.pid} on ")
            assert "wait for it to end or pass another --output-dir" in line
        first.send_signal(signal.SIGCONT)
        rest, _ = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, rest[-3000:]
    names = sorted(p.name for p in out.iterdir())
    assert names == [".ignite_rn50.lock", next(n for n in names if n.startswith("best_")),
                     "checkpoint_2.pt", "checkpoint_3.pt", "config.yaml", "curves.png",
                     "summary.json", "train.log", "train_loss.csv"], names
    log = (out / "train.log").read_text()
    assert log.count("command: ") == 1 and log.count("Epoch [3/3] done") == 1
    assert read_summary(out)["epochs_completed"] == 3
    losses = (out / "train_loss.csv").read_text().splitlines()
    assert len(losses) == 1 + 3 * 8  # one writer: a header and each logged iteration once


def test_sigint_to_one_rank_stops_every_rank_with_its_name(tmp_path: Path) -> None:
    """Only rank 1 receives SIGINT; rank 0 learns at the agreed step which signal it was."""
    out = tmp_path / "int1"
    proc = _popen([*TINY, "--nproc", "2", "--epochs", "20", "--print-freq", "2",
                   "--port", str(free_port()), "--output-dir", str(out)])
    _wait_for(proc, r"Epoch \[1/20\] Iter \[4/")
    ranks = _rank_pids(proc.pid)
    os.kill(ranks[1], signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, rest[-3000:]
    assert "stopped by SIGINT at epoch 1" in rest and "SIGTERM" not in rest


def test_ctrl_c_on_a_spawned_job(tmp_path: Path) -> None:
    """First Ctrl-C (SIGINT to the launcher): the ranks stop at an agreed step and save, exit
    0. A second one more than 2 s later stops the job at once: status 130, no rank left."""
    out = tmp_path / "int"
    args = [*TINY, "--nproc", "2", "--epochs", "50", "--port", str(free_port())]
    proc = _popen([*args, "--print-freq", "2", "--output-dir", str(out)])
    _wait_for(proc, r"Epoch \[1/50\] Iter \[4/")
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, rest[-3000:]
    assert "stopped by SIGINT" in rest and len(list(out.glob("interrupted_*.pt"))) == 1

    # --print-freq beyond the run: the ranks never reach a point where they could agree
    proc = _popen([*args, "--print-freq", "100000", "--output-dir", str(tmp_path / "int2")])
    _wait_for(proc, r"training ResNet")
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


def test_save_every_iters_then_kill_9_resumes_bit_exactly(tmp_path: Path) -> None:
    """--save-every-iters 3: one mid-epoch file at a time (the newest), beside the epoch
    checkpoints; a kill -9 mid-epoch resumes from it to the weights of a run never stopped,
    and the next epoch checkpoint removes it."""
    args = [*TINY, "--epochs", "3", "--print-freq", "1", "--save-every-iters", "3"]
    full = tmp_path / "full"
    assert run_main([*args, "--output-dir", str(full)]).returncode == 0
    assert not list(full.glob("iteration_checkpoint_*"))  # every epoch ended with its save
    out = tmp_path / "k"
    proc = _popen([*args, "--output-dir", str(out)])
    _wait_for(proc, r"Epoch \[2/3\] Iter \[6/")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    mids = sorted(p.name for p in out.glob("iteration_checkpoint_*.pt"))
    assert len(mids) == 1 and int(re.search(r"_(\d+)\.pt", mids[0])[1]) in (12, 15), mids
    assert sorted(p.name for p in out.glob("checkpoint_*.pt")) == ["checkpoint_1.pt"]
    assert find_latest_checkpoint(out) == out / mids[0]
    done = run_main([*args, "--output-dir", str(out), "--resume", "auto"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {out / mids[0]}" in done.stdout
    assert not list(out.glob("iteration_checkpoint_*"))
    a, b = model_state(full / "checkpoint_3.pt"), model_state(out / "checkpoint_3.pt")
    for key in a:
        assert torch.equal(a[key], b[key]), key


# A ResNet-18 checkpoint with its SGD momentum is ~86 MiB: 150 MiB hold one of them.
def test_full_disk_during_a_save_is_one_line_and_resume_finishes(tmp_path: Path,
                                                                  tmpfs) -> None:
    disk = tmpfs("150m")
    out = disk / "run"
    args = [*TINY, "--epochs", "2", "--output-dir", str(out)]
    proc = run_cli(args)
    line = assert_one_line_error_status(proc, 4)
    assert re.search(r"could not write best_checkpoint_1_top1=[\d.]+\.pt: " + re.escape(
        str(out)) + r" is full \(about [\d.]+ MiB needed, [\d.]+ MiB free\); the last good "
        r"checkpoint, checkpoint_1\.pt, is intact\. Free some space, then rerun with "
        r"--resume auto", line), line
    assert sorted(p.name for p in out.glob("*.pt")) == ["checkpoint_1.pt"]
    assert not [p for p in out.iterdir() if p.name.startswith("tmp")]  # no half-written file
    torch.load(out / "checkpoint_1.pt", map_location="cpu", weights_only=True)
    tmpfs.resize(disk, "600m")
    done = run_main([*args, "--resume", "auto"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_summary(out)["epochs_completed"] == 2


def test_full_disk_stops_every_rank_of_a_job(tmp_path: Path, tmpfs) -> None:
    out = tmpfs("150m") / "run"
    proc = run_cli([*TINY, "--nproc", "2", "--epochs", "2", "--port", str(free_port()),
                    "--synthetic-train-size", "512", "--output-dir", str(out)], timeout=600)
    line = assert_one_line_error_status(proc, 4)
    assert "is full" in line and "checkpoint_1.pt, is intact" in line
    assert "exited with status" not in proc.stderr  # the rank said why; nothing repeated


def assert_one_line_error_status(proc: subprocess.CompletedProcess, status: int) -> str:
    assert proc.returncode == status, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_ctrl_c_during_evaluate_is_one_line_and_130(tmp_path: Path) -> None:
    out = tmp_path / "e"
    assert run_main([*TINY, "--epochs", "1", "--output-dir", str(out)]).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "ignite_rn50.evaluate", "--checkpoint",
                             str(out / "checkpoint_1.pt"), *TINY, "--synthetic-test-size",
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
