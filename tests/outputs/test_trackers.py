"""The experiment trackers (``outputs/trackers.py``): ClearML (real SDK, offline sessions read
back) and TensorBoard (read with its own reader)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ignite_rn50.outputs import clearml_task
from tests.helpers import TINY, base_env, free_port, read_summary, run_cli

LOGGED = [*TINY, "--loggers", "tensorboard", "clearml", "--clearml-project", "tests",
          "--clearml-task", "tiny", "--clearml-tags", "ci", "small"]


def _sessions(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "offline").glob("*") if p.is_dir())


def _metrics(session: Path) -> list[dict]:
    events = []
    for line in (session / "metrics.jsonl").read_text().splitlines():
        item = json.loads(line)
        events.extend(item if isinstance(item, list) else [item])
    return events


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("clearml")
    env = base_env(CLEARML_CACHE_DIR=str(tmp / "cache"), HOME=str(tmp / "home"))
    out = tmp / "run"
    proc = run_cli([*LOGGED, "--clearml-mode", "auto", "--lr-policy", "cosine", "--mixup-alpha",
                    "0.2", "--output-dir", str(out)], env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"out": out, "cache": tmp / "cache", "proc": proc}


@pytest.mark.slow
def test_auto_without_server_goes_offline_and_says_where(offline_run: dict) -> None:
    sessions = _sessions(offline_run["cache"])
    assert len(sessions) == 1
    assert f"ClearML offline session: {sessions[0]}.zip" in offline_run["proc"].stdout
    assert "import_offline_session" in offline_run["proc"].stdout
    assert Path(f"{sessions[0]}.zip").is_file()


@pytest.mark.slow
def test_offline_session_holds_hparams_metrics_model(offline_run: dict) -> None:
    session = _sessions(offline_run["cache"])[0]
    task = json.loads((session / "task.json").read_text())
    assert task["name"] == "tiny" and task["project_name"] == "tests"
    hyper = task["hyperparams"]
    flat = {name: item["value"] for section in hyper.values() for name, item in
            ((k.split("/")[-1], v) for k, v in section.items())}
    assert {"training", "model", "data", "device", "output"} <= set(hyper)
    assert float(flat["lr"]) == 0.05 and int(flat["batch_size"]) == 32
    assert int(flat["epochs"]) == 2 and int(flat["depth"]) == 18
    assert "batch_size: 32" in task["configuration"]["resolved config"]["value"]

    events = _metrics(session)
    val_top1 = {e["iter"]: e["value"] for e in events
                if e.get("metric") == "val" and e.get("variant") == "top1"}
    history = read_summary(offline_run["out"])["history"]
    assert val_top1 == pytest.approx({r["epoch"]: r["val_top1"] for r in history})
    train_loss = [e for e in events if e.get("metric") == "train" and e.get("variant") == "loss"]
    assert [e["iter"] for e in train_loss] == [4, 8, 12, 16]
    assert any(e.get("metric") == "epoch" and e.get("variant") == "fps" for e in events)

    env = {k.split("/")[-1]: v["value"] for k, v in hyper["environment"].items()}
    assert env["command"].startswith("python -m ignite_rn50.run ")
    assert "--lr-policy cosine" in env["command"]
    assert env["torch"] == torch.__version__ and env["backend"] == "none (1 process)"
    assert {"python", "torchvision", "pytorch-ignite", "clearml", "device"} <= set(env)

    # the cosine policy reaches the dashboard: per epoch and at each logged iteration
    epoch_lr = {e["iter"]: e["value"] for e in events
                if e.get("metric") == "epoch" and e.get("variant") == "epoch_lr"}
    assert epoch_lr == pytest.approx({1: 0.05, 2: 0.025})
    train_lr = [e["value"] for e in events if e.get("metric") == "train" and
                e.get("variant") == "lr"]
    assert train_lr == pytest.approx([0.05, 0.05, 0.025, 0.025])

    models = {m["init"]["name"]: Path(m["weights"]["weights_filename"])
              for m in task["offline_output_models"]}
    assert len(task["offline_output_models"]) == 2 and models["last"].is_file()
    assert models["last"].read_bytes() == (offline_run["out"] / "checkpoint_2.pt").read_bytes()
    assert models["best"].is_file() and models["best"].name.startswith("best_checkpoint_")
    assert {p.name for p in (session / "models").iterdir()} == {
        models["last"].name, models["best"].name}  # one file per model, the newest
    assert hyper["environment"]["torch"]["description"].startswith("read-only")
    console = (session / "log.jsonl").read_text()
    assert "Epoch [2/2] done" in console  # the console log
    assert "command: python -m ignite_rn50.run" in console  # and the environment, first
    artifacts = {p.name for p in (session / "data").rglob("*") if p.is_file()}
    assert any("summary" in name for name in artifacts), artifacts


@pytest.mark.slow
def test_offline_session_holds_per_class_plots_and_debug_samples(offline_run: dict) -> None:
    """Plots: each evaluation's confusion matrix and per-class top-1; Debug Samples: the
    prediction grid each epoch and the mixed training batch (the recipe mixes)."""
    session = _sessions(offline_run["cache"])[0]
    events = _metrics(session)
    plots = {(e["metric"], e["iter"]): json.loads(e["plot_str"])["data"][0]
             for e in events if e["type"] == "plot"}
    summary = read_summary(offline_run["out"])
    for row in summary["history"]:
        matrix = plots[("confusion matrix", row["epoch"])]["z"]
        assert sum(map(sum, matrix)) == 64  # every test image once
        assert sum(matrix[i][i] for i in range(10)) / 64 == pytest.approx(row["val_top1"])
        bars = plots[("per-class top-1", row["epoch"])]
        assert bars["type"] == "bar" and len(bars["y"]) == 10
    best = summary["best_per_class"]
    assert plots[("per-class top-1", best["epoch"])]["y"] == pytest.approx(
        [c["top1"] or 0.0 for c in best["classes"]])
    images = {(e["metric"], e["variant"], e["iter"]): Path(e["url"])
              for e in events if e["type"] == "training_debug_image"}
    assert set(images) == {("predictions", "test images", 1), ("predictions", "test images", 2),
                           ("mixed training batch", "train", 1)}
    from PIL import Image
    for path in images.values():
        assert Image.open(path).size[0] > 300  # a 4 x 4 grid with captions
    acc = EventAccumulator(str(offline_run["out"] / "tensorboard"))
    acc.Reload()
    steps = {tag: [e.step for e in acc.Images(tag)] for tag in acc.Tags()["images"]}
    assert steps == {"predictions/test images": [1, 2], "mixed training batch/train": [1],
                     "val/confusion_matrix": [1, 2]}


@pytest.mark.slow
def test_a_cpu_run_prints_only_what_means_something(offline_run: dict) -> None:
    """No GPU-monitor noise on a machine without an NVIDIA GPU; the machine monitor stays."""
    text = offline_run["proc"].stdout + offline_run["proc"].stderr
    assert "GPU" not in text and "resource_monitor" not in text, text
    assert "Traceback" not in text


def test_clearml_internals_we_use_exist() -> None:
    """clearml_task.py relies on clearml 2.1 internals (use_report_threads,
    machine_monitor_class, register_offline_model, adopt_offline_record, attach_task); a
    clearml release that renames one fails here, not in a user's run."""
    from clearml import OutputModel, Task
    from clearml.config.defs import PROC_MASTER_ID_ENV_VAR
    from clearml.utilities.resource_monitor import ResourceMonitor

    assert hasattr(Task, "_report_subprocess_enabled")
    assert callable(getattr(OutputModel, "_update_weights_offline", None))
    source = inspect.getsource(ResourceMonitor)
    assert "self._gpustat = gpustat" in source and "if not self._gpustat" in source
    assert issubclass(clearml_task.machine_monitor_class(), ResourceMonitor)
    # register_offline_model and adopt_offline_record: the offline models list, task.json
    # written by _edit, and the variable spawned ranks find the owner's task by
    source = inspect.getsource(Task)
    assert "_offline_output_models" in inspect.getsource(OutputModel._update_weights_offline)
    assert callable(getattr(Task, "_edit", None)) and callable(Task.reload)
    assert "offline_output_models" in inspect.getsource(Task._save_data_to_offline_dir)
    assert PROC_MASTER_ID_ENV_VAR.key == "CLEARML_PROC_MASTER_ID" and "__is_subprocess" in source


@pytest.mark.slow
def test_tensorboard_has_the_same_scalars(offline_run: dict) -> None:
    acc = EventAccumulator(str(offline_run["out"] / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/top1", "val/top5", "val/loss", "epoch/fps",
            "epoch/data_wait", "epoch/epoch_loss"} <= tags
    history = read_summary(offline_run["out"])["history"]
    top1 = {e.step: e.value for e in acc.Scalars("val/top1")}
    assert top1 == pytest.approx({r["epoch"]: r["val_top1"] for r in history}, abs=1e-6)
    session = _sessions(offline_run["cache"])[0]
    clearml_loss = {e["iter"]: e["value"] for e in _metrics(session)
                    if e.get("metric") == "train" and e.get("variant") == "loss"}
    tb_loss = {e.step: e.value for e in acc.Scalars("train/loss")}
    assert tb_loss == pytest.approx(clearml_loss, rel=1e-5)
    assert [e.value for e in acc.Scalars("epoch/epoch_lr")] == pytest.approx([0.05, 0.025])


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_run_creates_one_task(tmp_path: Path) -> None:
    env = base_env(CLEARML_CACHE_DIR=str(tmp_path / "cache"))
    proc = run_cli([*LOGGED, "--clearml-mode", "offline", "--nproc", "2", "--epochs", "1",
                    "--port", str(free_port()), "--output-dir", str(tmp_path / "o")],
                   env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(_sessions(tmp_path / "cache")) == 1


@pytest.mark.slow
def test_online_dead_server_falls_back_offline_without_leaking_secret(tmp_path: Path) -> None:
    secret = "FAKE-SECRET-7f3a9c"
    dead = f"http://127.0.0.1:{free_port()}"
    env = base_env(CLEARML_CACHE_DIR=str(tmp_path / "cache"), CLEARML_API_HOST=dead,
                   CLEARML_WEB_HOST=dead, CLEARML_FILES_HOST=dead,
                   CLEARML_API_ACCESS_KEY="FAKEACCESS123", CLEARML_API_SECRET_KEY=secret)
    out = tmp_path / "o"
    proc = run_cli([*LOGGED, "--clearml-mode", "online", "--epochs", "1", "--output-dir",
                    str(out)], env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stdout.splitlines() if "warning: ClearML server" in line]
    assert len(warnings) == 1 and "offline session instead" in warnings[0]
    assert len(_sessions(tmp_path / "cache")) == 1
    assert read_summary(out)["epochs_completed"] == 1
    assert secret not in proc.stdout + proc.stderr
    for path in [*out.rglob("*"), *(tmp_path / "cache").rglob("*")]:
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_tensorboard_has_the_ema_scores_and_the_gradient_norm(ema_runs: tuple) -> None:
    """--ema-momentum adds val_ema/* beside val/*, --clip-grad-norm train/grad_norm."""
    whole, _ = ema_runs
    acc = EventAccumulator(str(whole / "tensorboard"))
    acc.Reload()
    assert {"val_ema/top1", "val_ema/top5", "val_ema/loss", "val/top1",
            "train/grad_norm"} <= set(acc.Tags()["scalars"])
    history = read_summary(whole)["history"]
    top1 = {e.step: e.value for e in acc.Scalars("val_ema/top1")}
    assert top1 == pytest.approx({r["epoch"]: r["val_ema_top1"] for r in history}, abs=1e-6)
    assert len(acc.Scalars("train/grad_norm")) == 2  # the print points (every 4 steps)
