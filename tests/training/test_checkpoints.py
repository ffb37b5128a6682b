"""Checkpoints and --resume (``training/checkpoints.py``): a resume equal to an uninterrupted
run, crash-safe saves (kill -9, mid-epoch files, a full disk), retention, and the
checkpoints a run refuses."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
import torch

from ignite_rn50.training.checkpoints import Checkpoints, find_latest_checkpoint
from tests.helpers import (
    TINY,
    assert_one_line_error,
    assert_one_line_error_status,
    free_port,
    model_state,
    popen_run,
    read_summary,
    run_cli,
    run_main,
    wait_for,
)


@pytest.mark.slow
def test_resume_2_to_3_equals_uninterrupted_3(tmp_path: Path) -> None:
    args = [*TINY, "--lr-milestones", "2", "--warmup-iters", "3"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert run_main([*args, "--epochs", "3", "--output-dir", str(full)]).returncode == 0
    assert run_main([*args, "--epochs", "2", "--output-dir", str(part)]).returncode == 0
    proc = run_main([*args, "--epochs", "3", "--output-dir", str(part), "--resume", "auto"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout and "checkpoint_2.pt" in proc.stdout
    a, b = model_state(full / "checkpoint_3.pt"), model_state(part / "checkpoint_3.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["epoch"] for r in read_summary(part)["history"]] == [1, 2, 3]
    assert read_summary(part)["final_top1"] == read_summary(full)["final_top1"]


def test_existing_checkpoints_without_resume_refused(tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert run_main([*TINY, "--epochs", "1", "--output-dir", str(out)]).returncode == 0
    before = {p.name: p.stat().st_mtime for p in out.iterdir()}
    proc = run_main([*TINY, "--epochs", "1", "--output-dir", str(out)])
    assert proc.returncode == 2 and "--resume auto" in proc.stderr
    assert {p.name: p.stat().st_mtime for p in out.iterdir()} == before


@pytest.mark.slow
def test_kill_9_then_resume_auto_finishes(tmp_path: Path) -> None:
    out = tmp_path / "k"
    args = [*TINY, "--epochs", "3", "--print-freq", "1", "--output-dir", str(out)]
    proc = popen_run(args)
    wait_for(proc, r"Epoch \[2/3\] Iter \[3/")
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


@pytest.mark.slow
def test_retention_bounded_across_resumes(tmp_path: Path) -> None:
    out = tmp_path / "r"
    args = [*TINY, "--keep-checkpoints", "2", "--output-dir", str(out)]
    assert run_main([*args, "--epochs", "3"]).returncode == 0
    assert run_main([*args, "--epochs", "5", "--resume", "auto"]).returncode == 0
    names = sorted(p.name for p in out.glob("*.pt"))
    assert [n for n in names if n.startswith("checkpoint_")] == ["checkpoint_4.pt",
                                                                 "checkpoint_5.pt"]
    assert len([n for n in names if n.startswith("best_")]) == 1 and len(names) == 3


def test_a_checkpoint_removed_by_hand_does_not_stop_the_run(tmp_path: Path) -> None:
    """A user deletes the old checkpoints to free the disk while the run goes on: retention
    finds nothing left to remove and saves on (it stopped the run with a traceback)."""
    from ignite.engine import Engine

    scores = iter([0.3, 0.6])
    saves = Checkpoints({"model": torch.nn.Linear(2, 2)}, tmp_path, keep=1,
                        top1=lambda: next(scores))
    engine = Engine(lambda *_: None)
    engine.state.epoch = 1
    saves.save_epoch(engine)
    for path in tmp_path.glob("*.pt"):
        path.unlink()
    engine.state.epoch = 2
    saves.save_epoch(engine)  # removes checkpoint_1.pt and the epoch-1 best: both gone
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == [
        "best_checkpoint_2_top1=0.6000.pt", "checkpoint_2.pt"]


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_save_every_iters_then_kill_9_resumes_bit_exactly(tmp_path: Path) -> None:
    """--save-every-iters 3: one mid-epoch file at a time (the newest), beside the epoch
    checkpoints; a kill -9 mid-epoch resumes from it to the weights of a run never stopped,
    and the next epoch checkpoint removes it."""
    args = [*TINY, "--epochs", "3", "--print-freq", "1", "--save-every-iters", "3"]
    full = tmp_path / "full"
    assert run_main([*args, "--output-dir", str(full)]).returncode == 0
    assert not list(full.glob("iteration_checkpoint_*"))  # every epoch ended with its save
    out = tmp_path / "k"
    proc = popen_run([*args, "--output-dir", str(out)])
    wait_for(proc, r"Epoch \[2/3\] Iter \[6/")
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
@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.distributed
def test_full_disk_stops_every_rank_of_a_job(tmp_path: Path, tmpfs) -> None:
    out = tmpfs("150m") / "run"
    proc = run_cli([*TINY, "--nproc", "2", "--epochs", "2", "--port", str(free_port()),
                    "--synthetic-train-size", "512", "--output-dir", str(out)], timeout=600)
    line = assert_one_line_error_status(proc, 4)
    assert "is full" in line and "checkpoint_1.pt, is intact" in line
    assert "exited with status" not in proc.stderr  # the rank said why; nothing repeated


def test_resume_with_another_stem_is_refused_by_name() -> None:
    from ignite_rn50.errors import UserError
    from ignite_rn50.training.checkpoints import RunIdentity

    identity = RunIdentity({"depth": 18, "stem": "imagenet"})
    with pytest.raises(UserError, match="stem: checkpoint has 'cifar', this run 'imagenet'"):
        identity.load_state_dict({"depth": 18, "stem": "cifar"})
    # a checkpoint from before stems were recorded was a CIFAR-stem run: it resumes as one
    RunIdentity({"depth": 18, "stem": "cifar"}).load_state_dict({"depth": 18})
    with pytest.raises(UserError, match="stem: checkpoint has 'cifar'"):
        identity.load_state_dict({"depth": 18})
