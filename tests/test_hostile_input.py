"""Hostile input: nothing already written is lost, no check passes NaN or nothing, no
traceback where one line belongs, and every error names the real problem. Each case failed
on 61481ee (an export that replaced the checkpoint, NaN weights exported with
``max_abs_diff=0``, a ``.tmp`` left by SIGTERM, ranks of a SIGKILLed launcher writing into
an unlocked folder and blaming SIGINT, numpy's seed traceback, ...)."""

from __future__ import annotations

import fcntl
import math
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ignite_rn50.deploy import onnx as deploy_onnx
from ignite_rn50.errors import UserError
from ignite_rn50.outputs import rundir
from ignite_rn50.training.checkpoints import find_latest_checkpoint
from tests.helpers import (
    REPO,
    TINY,
    assert_one_line_error,
    base_env,
    free_port,
    run_cli,
    run_main,
    write_cifar,
    write_cifar10,
)


@pytest.fixture(scope="module")
def run1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny epoch of our own (the tests copy what they change)."""
    out = tmp_path_factory.mktemp("hostile") / "run"
    proc = run_main([*TINY, "--epochs", "1", "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _copy_run(run1: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(run1, run)
    return run


def _export(checkpoint: Path, config: Path, *flags: str) -> subprocess.CompletedProcess:
    return run_main(["--checkpoint", str(checkpoint), "--config", str(config), *flags],
                    module="ignite_rn50.export")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# --- export: work lost, a check that proves nothing ------------------------------------------

@pytest.mark.parametrize("name", ["checkpoint_1.pt", "config.yaml", "train.log",
                                  "summary.json", "best", "checkpoint_9.pt", "notes.txt"])
def test_export_output_never_replaces_the_checkpoint_or_a_run_file(run1: Path, tmp_path: Path,
                                                                   name: str) -> None:
    run = _copy_run(run1, tmp_path)
    (run / "notes.txt").write_text("mine\n")
    assert (run / rundir.LOCK_NAME).exists()  # a run folder, as the trainer leaves it
    if name == "best":
        name = next(p.name for p in run.glob("best_*.pt"))
    before = _snapshot(run)
    proc = _export(run / "checkpoint_1.pt", run / "config.yaml", "--output", str(run / name))
    line = assert_one_line_error(proc, f"--output {run / name}")
    assert "pass another file name (model.onnx)" in line
    assert _snapshot(run) == before  # not one byte changed, nothing beside


def test_export_output_through_a_link_to_the_checkpoint_is_refused(run1: Path,
                                                                   tmp_path: Path) -> None:
    run = _copy_run(run1, tmp_path)
    link = tmp_path / "model.onnx"
    link.symlink_to(run / "checkpoint_1.pt")
    before = _snapshot(run)
    proc = _export(run / "checkpoint_1.pt", run / "config.yaml", "--output", str(link))
    assert_one_line_error(proc, "is the checkpoint being exported")
    assert _snapshot(run) == before


def test_export_replaces_an_onnx_file_only_after_the_check(run1: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    first = _export(run1 / "checkpoint_1.pt", run1 / "config.yaml", "--output", str(out))
    assert first.returncode == 0, first.stderr
    proc = _export(run1 / "checkpoint_1.pt", run1 / "config.yaml", "--output", str(out),
                   "--batch", "2")
    assert proc.returncode == 0, proc.stderr
    assert "batch=static 2" in proc.stdout.splitlines()[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_export_aipp_never_replaces_the_checkpoint_or_the_output(run1: Path,
                                                                 tmp_path: Path) -> None:
    run = _copy_run(run1, tmp_path)
    before = _snapshot(run)
    for aipp, needle in ((run / "checkpoint_1.pt", "is the checkpoint being exported"),
                         (tmp_path / "m.onnx", "--aipp and --output both name"),
                         (run / "config.yaml", "is a file the trainer owns")):
        proc = _export(run / "checkpoint_1.pt", run / "config.yaml", "--output",
                       str(tmp_path / "m.onnx"), "--aipp", str(aipp))
        assert_one_line_error(proc, needle)
    assert _snapshot(run) == before and not (tmp_path / "m.onnx").exists()


def test_export_of_nan_weights_fails_and_keeps_nothing(run1: Path, tmp_path: Path) -> None:
    state = torch.load(run1 / "checkpoint_1.pt", map_location="cpu", weights_only=True)
    state["model"]["fc.weight"][0, 0] = float("nan")
    bad = tmp_path / "nan.pt"
    torch.save(state, bad)
    out = tmp_path / "out"
    out.mkdir()
    proc = _export(bad, run1 / "config.yaml", "--output", str(out / "m.onnx"))
    assert_one_line_error(proc, f"--checkpoint {bad}: fc.weight holds NaN/inf")
    assert list(out.iterdir()) == []
    proc = run_main(["--checkpoint", str(bad), "--config", str(run1 / "config.yaml")],
                    module="ignite_rn50.evaluate")  # no top-1 from NaN either
    assert_one_line_error(proc, f"--checkpoint {bad}: fc.weight holds NaN/inf")


class _Stub:
    """An onnxruntime session stand-in: PyTorch's outputs, changed by ``change``."""

    def __init__(self, module: torch.nn.Module, change) -> None:
        self.module, self.change = module, change

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.change(self.module(torch.from_numpy(x)).numpy())


def _module(nan: bool = False) -> deploy_onnx.ExportModel:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    if nan:
        with torch.no_grad():
            net[1].bias[0] = float("nan")
    return deploy_onnx.ExportModel(net, (0, 0, 0), (1, 1, 1), False, False).eval()


def test_the_onnx_check_passes_nothing_vacuously() -> None:
    x, module = [torch.randn(2, 3, 2, 2)], _module()
    same = deploy_onnx.compare(module, _Stub(module, lambda y: y), x)  # type: ignore
    assert same.problem(1e-3) is None and same.images == 2
    theirs_nan = _Stub(module, lambda y: np.full_like(y, np.nan))
    agreement = deploy_onnx.compare(module, theirs_nan, x)  # type: ignore[arg-type]
    assert agreement.problem(1e-3) == "the onnxruntime outputs hold NaN/inf"
    nan = _module(nan=True)
    agreement = deploy_onnx.compare(nan, _Stub(nan, lambda y: y), x)  # type: ignore
    assert agreement.problem(1e-3) == "the PyTorch and onnxruntime outputs hold NaN/inf"
    assert math.isnan(agreement.max_abs_diff)
    for batches in ([], [torch.randn(0, 3, 2, 2)]):  # no batch, an empty one: no image
        agreement = deploy_onnx.compare(module, _Stub(module, lambda y: y), batches)
        assert agreement.problem(1e-3) == "the check compared no image"
    wrong = deploy_onnx.compare(module, _Stub(module, lambda y: y[:, :2]), x)
    assert "other shapes" in wrong.problem(1e-3)
    assert deploy_onnx.Agreement(math.nan, 2, 2).problem(1e-3) is not None
    assert deploy_onnx.Agreement(0.0, 1, 2).problem(1e-3) is not None


# --- SIGTERM: one line, 143, no temporary ----------------------------------------------------

def _popen(module: str, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, *args], env=base_env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _terminate(proc: subprocess.Popen) -> tuple[str, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("SIGTERM ignored for 120 s") from None


@pytest.mark.slow
def test_sigterm_during_export_is_one_line_143_and_no_temporary(run1: Path,
                                                                 tmp_path: Path) -> None:
    proc = _popen("ignite_rn50.export", ["--checkpoint", str(run1 / "checkpoint_1.pt"), *TINY,
                                         "--synthetic-test-size", "100000", "--verify-data",
                                         "--output", str(tmp_path / "m.onnx")])
    deadline = time.monotonic() + 240
    while not list(tmp_path.glob(".m.onnx.*.tmp")):  # the export is under way
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.5)
    _, stderr = _terminate(proc)
    assert proc.returncode == 143, stderr[-3000:]
    assert stderr.strip().splitlines() == ["ignite_rn50.export: terminated"], stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_sigterm_during_evaluate_is_one_line_and_143(run1: Path) -> None:
    proc = _popen("ignite_rn50.evaluate", ["--checkpoint", str(run1 / "checkpoint_1.pt"),
                                           *TINY, "--synthetic-test-size", "200000",
                                           "--eval-batch-size", "16"])
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("evaluating ")
    time.sleep(1)
    _, stderr = _terminate(proc)
    assert proc.returncode == 143, stderr[-3000:]
    assert stderr.strip().splitlines() == ["ignite_rn50.evaluate: terminated"], stderr


@pytest.mark.slow
@pytest.mark.distributed
def test_sigterm_during_a_two_process_evaluate_is_one_line_and_143(run1: Path) -> None:
    proc = _popen("ignite_rn50.evaluate", ["--checkpoint", str(run1 / "checkpoint_1.pt"),
                                           *TINY, "--synthetic-test-size", "200000",
                                           "--eval-batch-size", "16", "--nproc", "2",
                                           "--port", str(free_port())])
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("evaluating ")
    time.sleep(1)
    _, stderr = _terminate(proc)
    assert proc.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "ignite_rn50.evaluate: terminated", stderr


# --- kill -9 of a launcher: its ranks keep the folder until the last has left ----------------

def _alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def _ranks(launcher: int) -> list[int]:
    """The launcher's spawned ranks (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    return [int(pid) for pid in children
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


@pytest.mark.slow
@pytest.mark.distributed
def test_kill_9_of_the_launcher_keeps_the_folder_locked_until_the_ranks_leave(
        tmp_path: Path) -> None:
    out, log = tmp_path / "k9", tmp_path / "stdout.txt"
    with open(log, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "ignite_rn50.run", *TINY, "--nproc",
                                 "2", "--epochs", "20", "--print-freq", "2", "--port",
                                 str(free_port()), "--output-dir", str(out)],
                                env=base_env(), cwd=REPO, stdout=sink,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while "Epoch [1/20] Iter [4/" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)
    ranks = _ranks(proc.pid)
    assert len(ranks) == 2, ranks
    proc.kill()
    proc.wait()
    refused = 0
    while True:  # a new run's claim, again and again until the ranks have left
        try:
            lock = rundir.lock_output_dir(out)
        except UserError as exc:
            assert "is in use by another run" in str(exc) and "launcher is gone" in str(exc)
            refused += 1
            assert time.monotonic() < deadline + 120, "the ranks did not leave"
            time.sleep(0.05)
            continue
        # the lock goes with a rank's last descriptor, in its exit: allow that exit to end
        gone = time.monotonic() + 1
        while any(_alive(pid) for pid in ranks) and time.monotonic() < gone:
            time.sleep(0.01)
        assert not any(_alive(pid) for pid in ranks), "a rank still runs: the folder is shared"
        assert lock is not None
        lock.release()
        break
    assert refused > 0
    text = (out / "train.log").read_text()
    assert "stopped because the launcher is gone (it was killed) at epoch 1" in text, text
    assert "SIGINT" not in text
    assert len(list(out.glob("interrupted_checkpoint_*.pt"))) == 1


@pytest.mark.slow
@pytest.mark.distributed
def test_a_launcher_s_lock_is_shared_with_what_it_spawns(tmp_path: Path) -> None:
    """The mechanism alone: a spawned child holds the launcher's flock (the same open file
    description), so the lock outlives the launcher's own descriptor."""
    import multiprocessing

    from ignite_rn50.system.distributed import SharedFd

    lock = rundir.lock_output_dir(tmp_path)
    assert lock is not None
    ctx = multiprocessing.get_context("spawn")
    ready, go = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold_until, args=(SharedFd(lock.fd), ready, go))
    child.start()
    try:
        assert ready.wait(120)
        lock.release()  # the launcher's descriptor is gone, as with SIGKILL
        with pytest.raises(UserError, match="in use by another run"):
            rundir.lock_output_dir(tmp_path)
    finally:
        go.set()
        child.join(60)
    again = rundir.lock_output_dir(tmp_path)
    assert again is not None
    again.release()


def _hold_until(held, ready, go) -> None:
    """The child: keeps ``held`` open (an argument, alive while this runs)."""
    assert fcntl.fcntl(held.fd, fcntl.F_GETFD) >= 0  # open here
    ready.set()
    go.wait(120)


# --- tracebacks where one line belongs -------------------------------------------------------

@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_seed_out_of_range_is_one_line(tmp_path: Path, seed: str) -> None:
    proc = run_main([*TINY, "--seed", seed, "--output-dir", str(tmp_path / "o")])
    assert_one_line_error(proc, "--seed must be in 0..2147483647", f"got {seed}")
    assert not (tmp_path / "o").exists()


def test_resume_auto_skips_a_dangling_symlink(run1: Path, tmp_path: Path) -> None:
    run = _copy_run(run1, tmp_path)
    (run / "checkpoint_7.pt").symlink_to(tmp_path / "gone.pt")
    (run / "checkpoint_8.pt").symlink_to(run / "checkpoint_8.pt")  # a loop
    assert find_latest_checkpoint(run) == run / "checkpoint_1.pt"


def test_resume_auto_with_a_dangling_symlink_goes_on(run1: Path, tmp_path: Path) -> None:
    run = _copy_run(run1, tmp_path)
    (run / "checkpoint_7.pt").symlink_to(tmp_path / "gone.pt")
    proc = run_main([*TINY, "--epochs", "1", "--resume", "auto", "--output-dir", str(run)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "already complete" in proc.stdout + proc.stderr


@pytest.mark.parametrize("bad, needle", [
    (None, "found None at index 3"), ("7", "found '7' at index 3"),
    (2.5, "found 2.5 at index 3"), (100, "found 100 at index 3"),
    (True, "found True at index 3")])
def test_a_bad_test_label_is_named(tmp_path: Path, bad: object, needle: str) -> None:
    folder = write_cifar(tmp_path / "data")
    with open(folder / "test", "rb") as fh:
        obj = pickle.load(fh)
    obj["fine_labels"][3] = bad
    with open(folder / "test", "wb") as fh:
        pickle.dump(obj, fh)
    proc = run_main(["--device", "cpu", "--data", str(tmp_path / "data"), "--output-dir",
                     str(tmp_path / "o")])
    assert_one_line_error(proc, f"{folder / 'test'}: labels must be integers in 0..99",
                          needle)
    assert not (tmp_path / "o").exists()  # found after the folder was claimed: left as found


def test_ragged_data_is_one_line(tmp_path: Path) -> None:
    folder = write_cifar(tmp_path / "data")
    with open(folder / "test", "rb") as fh:
        obj = pickle.load(fh)
    obj["data"] = [list(range(3072)), list(range(5))]
    with open(folder / "test", "wb") as fh:
        pickle.dump(obj, fh)
    proc = run_main(["--device", "cpu", "--data", str(tmp_path / "data"), "--output-dir",
                     str(tmp_path / "o")])
    assert_one_line_error(proc, "'data' is not an array")


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("module", ["ignite_rn50.evaluate", "ignite_rn50.run"])
def test_more_processes_than_test_images(run1: Path, tmp_path: Path, module: str) -> None:
    """Rank 1 has no test image: it takes part in the metrics' all-reduce with zero counts."""
    extra = (["--checkpoint", str(run1 / "checkpoint_1.pt")] if module.endswith("evaluate")
             else ["--epochs", "1", "--output-dir", str(tmp_path / "o")])
    proc = run_cli([*TINY, "--synthetic-test-size", "1", "--nproc", "2", "--port",
                    str(free_port()), *extra], module=module)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr
    if module.endswith("evaluate"):
        assert proc.stdout.strip().splitlines()[-1].endswith(" images=1")
    else:
        assert "Epoch [1/1] done" in proc.stdout + proc.stderr


# --- errors that name the wrong thing -----------------------------------------------------------

def test_a_missing_cifar10_batch_is_named(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path / "data")
    (folder / "data_batch_3").unlink()
    proc = run_main(["--device", "cpu", "--dataset", "cifar10", "--data",
                     str(tmp_path / "data"), "--output-dir", str(tmp_path / "o")])
    line = assert_one_line_error(proc, f"{folder} holds CIFAR-10 without data_batch_3;")
    assert "data_batch_1" not in line


@pytest.mark.parametrize("where", ["data", "dataset folder"])
def test_a_symlink_loop_is_named(tmp_path: Path, where: str) -> None:
    data = tmp_path / "data"
    if where == "data":
        data.symlink_to(data)
    else:
        data.mkdir()
        (data / "cifar-100-python").symlink_to(data / "cifar-100-python")
    proc = run_main(["--device", "cpu", "--data", str(data), "--output-dir",
                     str(tmp_path / "o")])
    assert_one_line_error(proc, "is a symlink loop")


@pytest.mark.parametrize("flag, value", [("--lr", "inf"), ("--lr", "nan"),
                                         ("--momentum", "inf"), ("--warmup-epochs", "inf"),
                                         ("--loss-scale", "inf"), ("--mixup-alpha", "inf"),
                                         ("--weight-decay", "-inf")])
def test_non_finite_numbers_are_refused_up_front(tmp_path: Path, flag: str, value: str) -> None:
    proc = run_main([*TINY, f"{flag}={value}", "--output-dir", str(tmp_path / "o")])
    assert_one_line_error(proc, f"{flag} must be a finite number, got {value}")
    assert not (tmp_path / "o").exists()


def test_non_finite_number_in_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("momentum: .inf\n")
    proc = run_main([*TINY, "--config", str(config), "--output-dir", str(tmp_path / "o")])
    assert_one_line_error(proc, "--momentum must be a finite number, got inf")


# --- found by the same patterns ------------------------------------------------------------------

def test_dist_timeout_beyond_range_is_one_line(tmp_path: Path) -> None:
    proc = run_main([*TINY, "--dist-timeout", str(10**15), "--output-dir", str(tmp_path / "o")])
    assert_one_line_error(proc, "--dist-timeout must be in 1..2592000")


def test_export_paths_that_do_not_stat_are_one_line(run1: Path, tmp_path: Path) -> None:
    loop = tmp_path / "loop.onnx"
    loop.symlink_to(loop)
    proc = _export(run1 / "checkpoint_1.pt", run1 / "config.yaml", "--output", str(loop))
    assert_one_line_error(proc, f"--output {loop} is a symlink loop")
    dangling = tmp_path / "ck.pt"
    dangling.symlink_to(tmp_path / "gone.pt")
    for module, extra in (("ignite_rn50.export", ["--output", str(tmp_path / "m.onnx")]),
                          ("ignite_rn50.evaluate", [])):
        proc = run_main(["--checkpoint", str(dangling), *TINY, *extra], module=module)
        assert_one_line_error(proc, f"--checkpoint {dangling} is a dangling symlink")


@pytest.mark.parametrize("code, line, status", [
    (-signal.SIGTERM, "p: terminated", 143), (-signal.SIGINT, "p: interrupted", 130),
    (-signal.SIGKILL, "p: error: process 1 of the job was killed by SIGKILL", 137)])
def test_a_rank_ended_by_a_signal_ends_the_job_as_that_signal(
        capsys: pytest.CaptureFixture, code: int, line: str, status: int) -> None:
    from ignite_rn50 import cli

    assert cli._rank_exit_status("p", code, 1) == status
    assert capsys.readouterr().err.strip().startswith(line)
