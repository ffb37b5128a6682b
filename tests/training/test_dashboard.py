"""The ClearML dashboard drives the run (``training/dashboard.py``): the task is opened and
the configuration connected before anything is built, and under an agent the task's stored
values, edited as the UI stores them (strings), are what trains, in one process and in a
spawned two-process job; a bad edited value is one line. --clearml-queue without a server.

The agent's side without a server: clearml decides "running remotely" from CLEARML_TASK_ID
(``clearml.config.running_remotely``), which is how clearml-agent starts a task; with
CLEARML_OFFLINE_MODE the SDK reads that task from its offline session folder. Everything
else is the real SDK; only the task's copy is edited here, where a server would hold it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import (
    TINY,
    assert_one_line_error,
    base_env,
    clearml_params,
    clearml_sessions,
    edit_clearml_task,
    free_port,
    popen_run,
    read_summary,
    run_cli,
    run_main,
)

CMDLINE = [*TINY, "--loggers", "clearml"]  # lr 0.05, global batch 32, 2 epochs, 1 process
MAKE_TASK = """
import sys
from ignite_rn50.config.parsing import parse_config
from ignite_rn50.outputs import clearml_task
from ignite_rn50.training import dashboard
cfg = parse_config(sys.argv[1:])
task, offline = clearml_task.open_task(dashboard.task_options(cfg))
clearml_task.connect_config(task, cfg.groups())
clearml_task.finish_task(task, offline)
"""


@pytest.fixture(scope="module")
def stored_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real offline task, its configuration connected by our code as a local run does."""
    tmp = tmp_path_factory.mktemp("stored")
    env = base_env(CLEARML_CACHE_DIR=str(tmp / "cache"), HOME=str(tmp))
    proc = subprocess.run([sys.executable, "-c", MAKE_TASK, *CMDLINE, "--output-dir",
                           str(tmp / "first")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (session,) = clearml_sessions(tmp / "cache")
    assert clearml_params(session)["training/lr"] == "0.05"
    return session


def agent_env(cache: Path, session: Path) -> dict[str, str]:
    """What clearml-agent sets for the task it runs (here offline, without a server)."""
    return base_env(CLEARML_CACHE_DIR=str(cache), HOME=str(cache.parent),
                    CLEARML_TASK_ID=session.name, CLEARML_OFFLINE_MODE="1")


def _models(session: Path) -> dict[str, Path]:
    """The task's output models (name -> the weights file in the session), as written."""
    for _ in range(50):  # task.json may be caught while ClearML rewrites it
        try:
            task = json.loads((session / "task.json").read_text())
            break
        except json.JSONDecodeError:
            time.sleep(0.1)
    return {m["init"]["name"]: Path(m["weights"]["weights_filename"])
            for m in task.get("offline_output_models", [])}


def _wait_for_model(proc: subprocess.Popen, session: Path, name: str, file: str) -> None:
    deadline = time.monotonic() + 400
    while _models(session).get(name, Path()).name != file:
        assert proc.poll() is None, proc.stdout.read()[-3000:] if proc.stdout else ""
        assert time.monotonic() < deadline
        time.sleep(0.1)


@pytest.mark.slow
def test_an_agent_run_trains_the_edited_values_and_a_kill_leaves_its_models(
        stored_task: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    session = edit_clearml_task(stored_task, tmp_path / "cache", {
        "training/lr": "0.02", "training/batch_size": "16", "training/epochs": "3",
        "data/synthetic_train_size": "128", "output/output_dir": str(out)})
    proc = popen_run([*CMDLINE, "--output-dir", str(tmp_path / "cmdline")],
                     env=agent_env(tmp_path / "cache", session))
    try:
        _wait_for_model(proc, session, "last", "checkpoint_2.pt")
        proc.send_signal(signal.SIGKILL)  # after its second epoch's save
        console = proc.communicate(timeout=60)[0]
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert "running with its stored parameters" in console
    assert not (tmp_path / "cmdline").exists()  # the command line's folder: not the run's
    summary = read_summary(out)
    assert (summary["lr"], summary["global_batch_size"], summary["epochs_completed"]) == \
        (0.02, 16, 2)
    log = (out / "train.log").read_text()
    assert "global batch 16, 8 iterations/epoch, 3 epochs, lr 0.02," in log
    assert "Epoch [2/3] done" in log and "lr 0.020000" in log
    # the dashboard's parameters are what trained
    trained = yaml.safe_load((out / "config.yaml").read_text())
    stored = clearml_params(session)
    for key in ("lr", "batch_size", "epochs"):
        assert yaml.safe_load(stored[f"training/{key}"]) == trained[key], key
    models = _models(session)
    assert models["last"].name == "checkpoint_2.pt"
    assert models["best"].name.startswith("best_checkpoint_")
    assert models["last"].read_bytes() == (out / "checkpoint_2.pt").read_bytes()
    assert set(torch.load(models["best"], map_location="cpu", weights_only=True)) >= {"model"}
    # what task.json names exists (a kill may leave the copy it no longer names as well)
    assert {models["last"].name, models["best"].name} <= {
        p.name for p in (session / "models").iterdir()}


@pytest.mark.slow
@pytest.mark.distributed
def test_a_two_process_agent_run_trains_the_edited_values_into_one_task(
        stored_task: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    session = edit_clearml_task(stored_task, tmp_path / "cache", {
        "training/lr": "0.02", "training/batch_size": "16", "training/epochs": "1",
        "distributed/nproc": "2", "distributed/port": str(free_port()),
        "data/synthetic_train_size": "128", "output/output_dir": str(out)})
    proc = run_cli(CMDLINE, env=agent_env(tmp_path / "cache", session), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = read_summary(out)
    assert (summary["lr"], summary["global_batch_size"], summary["epochs_completed"],
            summary["world_size"]) == (0.02, 16, 1, 2)
    log = (out / "train.log").read_text()
    assert "on cpu x 2, global batch 16, 8 iterations/epoch, 1 epochs, lr 0.02," in log
    assert clearml_sessions(tmp_path / "cache") == [session]  # rank 0 reported into it
    stored = clearml_params(session)
    assert stored["environment/backend"] == "gloo (2 processes)"
    assert (stored["training/lr"], stored["distributed/nproc"]) == ("0.02", "2")
    assert set(_models(session)) == {"last", "best"}


@pytest.mark.slow
def test_a_bad_edited_value_is_one_line_naming_the_parameter(stored_task: Path,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "run"
    session = edit_clearml_task(stored_task, tmp_path / "cache", {
        "training/lr": "abc", "output/output_dir": str(out)})
    proc = run_cli(CMDLINE, env=agent_env(tmp_path / "cache", session))
    assert_one_line_error(proc, "ClearML parameter training/lr must be number, got 'abc'")
    assert not out.exists()  # refused before anything was built or written


@pytest.mark.parametrize(("extra", "needle"), [
    ([], "no ClearML server is configured"),
    (["--clearml-mode", "offline"], "needs clearml in --loggers and --clearml-mode auto")])
def test_clearml_queue_without_a_server_is_one_line(tmp_path: Path, extra: list[str],
                                                    needle: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CLEARML_API_HOST", "CLEARML_API_ACCESS_KEY", "CLEARML_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/clearml.conf
    monkeypatch.setenv("CLEARML_CACHE_DIR", str(tmp_path / "cache"))
    proc = run_main([*CMDLINE, "--clearml-queue", "gpu", *extra, "--output-dir",
                     str(tmp_path / "o")])
    assert_one_line_error(proc, "--clearml-queue gpu", needle)
    assert not (tmp_path / "o").exists() and not (tmp_path / "cache").exists()
