"""What the tests share besides fixtures (those are in conftest.py): the tiny run, the ways to
run an entry point (in this process or as a command), the CIFAR file writers, and the checks
of a one-line refusal. Imported everywhere as ``from tests.helpers import ...``."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import pickle
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
STANDIN = Path(os.environ.get("NPU_STANDIN", REPO.parent / "shared" / "npu-standin"))

# A run small enough for seconds on 2 CPU cores: ResNet-18 on 8x8 synthetic images.
TINY = ["--device", "cpu", "--dataset", "synthetic", "--synthetic-image-size", "8",
        "--synthetic-train-size", "256", "--synthetic-test-size", "64",
        "--synthetic-classes", "10", "--depth", "18", "--batch-size", "32", "--epochs", "2",
        "--lr", "0.05", "--lr-milestones", "100", "--print-freq", "4", "--loggers",
        "--progress-bar", "off", "--num-workers", "0"]

# A folder-dataset run on the digits (``write_digits``): ResNet-18, 12 px, four epochs
FOLDER_RUN = ["--device", "cpu", "--dataset", "folder", "--image-size", "12", "--depth", "18",
              "--batch-size", "16", "--epochs", "4", "--lr", "0.02", "--lr-milestones", "100",
              "--print-freq", "4", "--loggers", "--progress-bar", "off", "--num-workers", "0",
              "--data-pipeline", "device"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           # TRAINS_*: clearml sets each of its variables under the old name too (EnvEntry.set);
           # an in-process test's Task.init leaves TRAINS_PROC_MASTER_ID, which would make a
           # child's Task.init a stub of this process's task
           if not k.startswith(("CLEARML_", "TRAINS_", "RANK", "LOCAL_RANK", "WORLD_SIZE",
                                "MASTER_", "SLURM_", "TORCHELASTIC"))}
    if "CLEARML_CACHE_DIR" in os.environ:  # the suite's own (conftest), never the user's ~/.clearml
        env["CLEARML_CACHE_DIR"] = os.environ["CLEARML_CACHE_DIR"]
    env["PYTHONPATH"] = str(REPO)
    env.pop("OMP_NUM_THREADS", None)  # the trainer splits the cores over its processes
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_cli(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 300,
            cwd: Path | None = None, module: str = "ignite_rn50.run"
            ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], env=env or base_env(),
                          cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout)


def run_main(args: list[str], module: str = "ignite_rn50.run") -> subprocess.CompletedProcess:
    """The entry point's ``main`` in this process: the same code as the command, without an
    interpreter's start (seconds of imports on our CPUs). For single-process CPU runs that
    need no signal, no worker process and no NPU stand-in; the others go through
    ``run_cli``. (The run's first log line then names pytest's command line.)"""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = importlib.import_module(module).main(list(args))
        except SystemExit as exc:  # argparse's own exit
            status = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess([module, *args], status, out.getvalue(), err.getvalue())


def popen_run(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """The trainer as a command still running (to signal it), stdout and stderr together."""
    return subprocess.Popen([sys.executable, "-m", "ignite_rn50.run", *args],
                            env=env or base_env(), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for(proc: subprocess.Popen, pattern: str, timeout: float = 240) -> list[str]:
    """Read ``proc``'s output up to the first line matching ``pattern``."""
    assert proc.stdout is not None
    seen, deadline = [], time.monotonic() + timeout
    for line in proc.stdout:
        seen.append(line)
        if re.search(pattern, line):
            return seen
        assert time.monotonic() < deadline, "".join(seen[-20:])
    raise AssertionError("process ended before: " + pattern + "\n" + "".join(seen[-20:]))


def read_summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def model_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, no traceback, a single 'error:' line naming the problem."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def assert_one_line_error_status(proc: subprocess.CompletedProcess, status: int) -> str:
    """Exit ``status``, no traceback, a single 'error:' line (returned)."""
    assert proc.returncode == status, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def write_cifar(root: Path, n_train: int = 64, n_test: int = 32, seed: int = 0,
                parent: bool = True) -> Path:
    """Real cifar-100-python pickles (the official layout and keys), small."""
    folder = root / "cifar-100-python" if parent else root
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = rng.integers(0, 100, n)
        obj = {"filenames": [f"img_{i}.png" for i in range(n)],
               "batch_label": f"{name} batch", "fine_labels": fine.tolist(),
               "coarse_labels": (fine // 5).tolist(),
               "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        with open(folder / name, "wb") as fh:
            pickle.dump(obj, fh)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": [f"class{i}" for i in range(100)],
                     "coarse_label_names": [f"super{i}" for i in range(20)]}, fh)
    return folder


def write_cifar10(root: Path, per_batch: int = 16, n_test: int = 24, seed: int = 0) -> Path:
    """Real cifar-10-batches-py pickles (data_batch_1..5, test_batch, batches.meta, key
    'labels'), small; labels 0..9, images with a class-dependent brightness so a short run
    can learn them."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        labels = rng.integers(0, 10, n)
        data = rng.integers(0, 40, (n, 3072)) + (labels[:, None] * 20)
        obj = {"batch_label": name, "labels": labels.tolist(),
               "data": data.astype(np.uint8), "filenames": [f"{name}_{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as fh:
            pickle.dump(obj, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch":
                     per_batch, "num_vis": 3072}, fh)
    return folder


# --- ClearML offline sessions ---------------------------------------------------------------------

def clearml_sessions(cache: Path) -> list[Path]:
    """The offline sessions' folders under a CLEARML_CACHE_DIR."""
    return sorted(p for p in (cache / "offline").glob("*") if p.is_dir())


def clearml_events(session: Path) -> list[dict]:
    """Every event of a session's metrics.jsonl (scalars, plots, debug images)."""
    events = []
    for line in (session / "metrics.jsonl").read_text().splitlines():
        item = json.loads(line)
        events.extend(item if isinstance(item, list) else [item])
    return events


def clearml_params(session: Path) -> dict[str, str]:
    """The task's hyperparameters as stored: {"training/lr": "0.05", ...}."""
    task = json.loads((session / "task.json").read_text())
    return {f"{section}/{name}": item["value"] for section, items in task["hyperparams"].items()
            for name, item in items.items()}


def edit_clearml_task(session: Path, cache: Path, edits: dict[str, str]) -> Path:
    """A copy of an offline task under ``cache`` (same id) with hyperparameters edited as
    the dashboard stores them, strings: what a clone edited in the UI holds when an agent
    starts it (with CLEARML_TASK_ID set to its id)."""
    copy = cache / "offline" / session.name
    (copy / "data").mkdir(parents=True)
    task = json.loads((session / "task.json").read_text())
    for where, value in edits.items():
        section, name = where.split("/")
        task["hyperparams"][section][name]["value"] = value
    (copy / "task.json").write_text(json.dumps(task))
    return copy


DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_MODES = ("L", "RGB", "P", "RGBA")  # grey, colour, palette, with alpha: all read as RGB


def write_digits(root: Path, train_per_class: int = 50, val_per_class: int = 16,
                 split: str = "val") -> Path:
    """scikit-learn's handwritten digits (8x8, 0-16) as real image files in ImageFolder's
    layout, ``root/train/<name>/`` and ``root/<split>/<name>/``: PNG and JPEG, sides from 10
    to 27 px, grey, RGB, palette and RGBA images, ink coloured per image. Returns ``root``."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    counts = {name: 0 for name in DIGIT_NAMES}
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        name = DIGIT_NAMES[label]
        seen = counts[name]
        if seen >= train_per_class + val_per_class:
            continue
        counts[name] += 1
        folder = root / ("train" if seen < train_per_class else split) / name
        folder.mkdir(parents=True, exist_ok=True)
        ink = (image / 16.0)[..., None] * rng.integers(128, 256, 3)  # light on dark
        pixels = Image.fromarray(ink.astype(np.uint8)).resize(
            (10 + i % 18, 10 + i % 18), Image.BILINEAR)
        mode = DIGIT_MODES[i % len(DIGIT_MODES)]
        pixels = pixels.convert(mode) if mode != "P" else pixels.quantize(16)
        if i % 3 == 0 and mode in ("L", "RGB"):
            pixels.save(folder / f"{i}.jpg", quality=95)
        else:
            pixels.save(folder / f"{i}.png")
    return root
