"""Fixtures: the suite's one trained tiny run, real cifar-100-python files, the NPU stand-in,
a tmpfs of our own. The helpers they use (TINY, run_main, run_cli, ...) are in helpers.py."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from ignite_rn50.model.weights import to_mmcls
from tests.helpers import (
    FOLDER_RUN,
    REPO,
    STANDIN,
    TINY,
    base_env,
    model_state,
    run_main,
    write_cifar,
    write_digits,
)

# The signal tests send SIGINT to the processes they start. A pytest started in the background
# by a non-interactive shell (`cmd &`, nohup) inherits SIGINT ignored, and so would every
# child it starts (an ignored signal stays ignored across exec; Python then installs no
# KeyboardInterrupt), which is not how a user's terminal starts our commands. A handler of
# our own is reset to the default at exec, so the children start as from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def clearml_cache_of_the_suite(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every ClearML offline session a test starts (in process or in a child, through
    base_env) goes under the suite's temporary folder, not into the user's ~/.clearml."""
    os.environ["CLEARML_CACHE_DIR"] = str(tmp_path_factory.mktemp("clearml-cache"))


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny epoch (``TINY``, ``--epochs 1``), trained once for the whole suite: read it,
    never write into it. Beside the run's own files (checkpoint_1.pt, config.yaml,
    summary.json), its weights as the ModelZoo package (mmcls 0.x) saves them:

    - ``mmcls_fp32.pth``: mmcls's layout and meta, fp32;
    - ``mmcls_fp16_ddp.pth``: apex O2's (BN in fp32, convolutions and classifier in fp16)
      under DDP's ``module.`` prefix;
    - ``mmcls_fp16.pth``: every floating weight but the ``bn`` ones in fp16, the prefix too.
    """
    out = tmp_path_factory.mktemp("trained") / "run"
    proc = run_main([*TINY, "--epochs", "1", "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    mmcls = to_mmcls(model_state(out / "checkpoint_1.pt"))
    meta = {"epoch": 1, "iter": 8, "mmcls_version": "0.23.2", "mmcv_version": "1.7.0",
            "config": "model = dict(type='ImageClassifier')", "CLASSES": ("a", "b"),
            "time": "Sun Nov 29 12:00:00 2026"}
    # apex O2 keeps BN in fp32 and casts convolutions and the classifier to fp16
    o2 = {k: v.half() if v.is_floating_point() and "bn" not in k and "downsample.1" not in k
          else v for k, v in mmcls.items()}
    torch.save({"meta": meta, "state_dict": mmcls, "optimizer": {}}, out / "mmcls_fp32.pth")
    torch.save({"meta": meta, "state_dict": {"module." + k: v for k, v in o2.items()}},
               out / "mmcls_fp16_ddp.pth")
    fp16 = {"module." + k: v.half() if v.is_floating_point() and "bn" not in k else v
            for k, v in mmcls.items()}
    torch.save({"meta": {"epoch": 1}, "state_dict": fp16}, out / "mmcls_fp16.pth")
    return out


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn's digits as PNG/JPEG class folders (``write_digits``), written once:
    read it, never write into it (copy it to change it)."""
    return write_digits(tmp_path_factory.mktemp("digits") / "digits")


@pytest.fixture(scope="session")
def trained_folder(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run trained once on ``digits_dir`` (device pipeline, ResNet-18, 12 px, 4 epochs):
    read it, never write into it."""
    out = tmp_path_factory.mktemp("trained_folder") / "run"
    proc = run_main([*FOLDER_RUN, "--data", str(digits_dir), "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture
def tmpfs(tmp_path: Path):
    """A small RAM file system of our own (root and mount(8) needed; skipped elsewhere):
    ``tmpfs(size)`` mounts it, ``tmpfs.resize(size)`` remounts it larger."""
    mounts: list[Path] = []

    class Mount:
        def __call__(self, size: str) -> Path:
            path = tmp_path / f"tmpfs{len(mounts)}"
            path.mkdir()
            proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                                   str(path)], capture_output=True, text=True)
            if proc.returncode:
                pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()})")
            mounts.append(path)
            return path

        def resize(self, path: Path, size: str) -> None:
            subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)

    yield Mount()
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    write_cifar(tmp_path / "data")
    return tmp_path / "data"


@pytest.fixture
def standin_env() -> dict[str, str]:
    """Environment that puts ../shared/npu-standin's torch_npu on the path (skip if absent)."""
    if not (STANDIN / "torch_npu" / "__init__.py").is_file():
        pytest.skip("../shared/npu-standin is absent")
    build = Path(os.environ.get("FAKENPU_BUILD_DIR", "/tmp/fakenpu-build-tests"))
    return base_env(PYTHONPATH=f"{STANDIN}{os.pathsep}{REPO}", FAKENPU_BUILD_DIR=str(build))


@pytest.fixture(scope="session")
def ema_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny runs with --ema-momentum (2 epochs of 4 steps): ``whole`` uninterrupted,
    ``resumed`` trained 1 epoch and then resumed to 2 (read them, never write into them)."""
    root = tmp_path_factory.mktemp("ema")
    args = [*TINY, "--synthetic-train-size", "64", "--synthetic-test-size", "32",
            "--batch-size", "16", "--ema-momentum", "0.2",
            "--clip-grad-norm", "5", "--profile-steps", "2:3", "--loggers", "tensorboard"]
    whole, resumed = root / "whole", root / "resumed"
    for argv in ([*args, "--output-dir", str(whole)],
                 [*args, "--epochs", "1", "--output-dir", str(resumed)],
                 [*args, "--output-dir", str(resumed), "--resume", "auto"]):
        proc = run_main(argv)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return whole, resumed
