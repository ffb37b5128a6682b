"""The output folder (``outputs/rundir.py``): one that cannot be written, and one run at a
time in it."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.helpers import (
    TINY,
    assert_one_line_error,
    popen_run,
    read_summary,
    run_cli,
    run_main,
    wait_for,
)


def test_output_dir_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(run_main([*TINY, "--output-dir", str(blocker / "sub")]),
                          "--output-dir", "not writable")


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
