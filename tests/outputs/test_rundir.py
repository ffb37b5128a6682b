"""The output folder (``outputs/rundir.py``): one that cannot be written, and one run at a
time in it."""

from __future__ import annotations

import pickle
import signal
from pathlib import Path

import pytest

from ignite_rn50.outputs import rundir
from tests.helpers import (
    TINY,
    assert_one_line_error,
    popen_run,
    read_summary,
    run_cli,
    run_main,
    wait_for,
    write_cifar,
)


def test_output_dir_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(run_main([*TINY, "--output-dir", str(blocker / "sub")]),
                          "--output-dir", "not writable")


def _cifar_with_a_bad_label(root: Path) -> Path:
    """Data whose fault is found only when the run reads it, after it claimed its folder."""
    folder = write_cifar(root)
    with open(folder / "test", "rb") as fh:
        obj = pickle.load(fh)
    obj["fine_labels"][3] = 100
    with open(folder / "test", "wb") as fh:
        pickle.dump(obj, fh)
    return root


def test_a_run_stopped_by_bad_input_leaves_each_folder_as_it_found_it(tmp_path: Path) -> None:
    data = _cifar_with_a_bad_label(tmp_path / "data")
    args = ["--device", "cpu", "--depth", "18", "--loggers", "--data", str(data)]
    made = tmp_path / "made" / "by" / "the-run"
    assert_one_line_error(run_main([*args, "--output-dir", str(made)]), "labels must be")
    assert not (tmp_path / "made").exists()  # the folders it made, its log and lock: gone
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert_one_line_error(run_main([*args, "--output-dir", str(mine)]), "labels must be")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_a_folder_the_run_wrote_more_into_is_kept_whole(tmp_path: Path) -> None:
    out = tmp_path / "run"
    lock = rundir.claim_output_dir(str(out), resuming=False)
    assert lock is not None
    (out / rundir.LOG_NAME).write_text("the run's log\n")
    (out / "config.yaml").write_text("epochs: 1\n")
    lock.leave_as_found()
    lock.release()
    assert sorted(p.name for p in out.iterdir()) == [rundir.LOCK_NAME, "config.yaml",
                                                      rundir.LOG_NAME]


def test_refusing_another_runs_checkpoints_leaves_their_folder_as_it_was(tmp_path: Path
                                                                        ) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "checkpoint_1.pt").write_bytes(b"another run's")
    assert_one_line_error(run_main([*TINY, "--output-dir", str(other)]), "already holds")
    assert [p.name for p in other.iterdir()] == ["checkpoint_1.pt"]


@pytest.mark.slow
@pytest.mark.distributed
def test_a_spawned_job_stopped_by_bad_input_leaves_no_folder(tmp_path: Path) -> None:
    data = _cifar_with_a_bad_label(tmp_path / "data")
    out = tmp_path / "two"
    proc = run_cli(["--device", "cpu", "--depth", "18", "--loggers", "--data", str(data),
                    "--nproc", "2", "--output-dir", str(out)])
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "labels must be integers" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_second_run_on_a_busy_output_dir_stops_and_touches_nothing(tmp_path: Path) -> None:
    out = tmp_path / "busy"
    args = [*TINY, "--epochs", "3", "--print-freq", "1", "--output-dir", str(out)]
    first = popen_run(args)
    try:
        wait_for(first, r"Epoch \[1/3\] Iter \[1/")  # training (most likely no checkpoint
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
