"""The ModelZoo scripts in test/ (README "ModelZoo scripts"): smoke runs of all eight, the
recipe each runs, their CaseName logs, loss files and perf reports against summary.json, the
npu path on the stand-in, the failure paths and env_npu.sh."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import REPO, TINY, base_env

TEST_DIR = REPO / "test"
NETWORK = "Resnet50_cifar_for_PyTorch"
KEYS = ["Network", "RankSize", "BatchSize", "DeviceType", "CaseName", "ActualFPS",
        "TrainingTime", "TrainAccuracy", "ActualLoss", "E2ETrainingTime"]
RECIPES = {16: "configs/resnet50_cifar100.yaml", 32: "configs/resnet50_cifar100_cos.yaml"}
# script -> (mode, processes the script asks for, batch per device)
SCRIPTS = {
    "train_full_1p.sh": ("full", 1, 16),
    "train_full_1p_bs32.sh": ("full", 1, 32),
    "train_performance_1p.sh": ("performance", 1, 16),
    "train_performance_1p_bs32.sh": ("performance", 1, 32),
    "train_full_8p.sh": ("full", 8, 16),
    "train_full_8p_bs32.sh": ("full", 8, 32),
    "train_performance_8p.sh": ("performance", 8, 16),
    "train_performance_8p_bs32.sh": ("performance", 8, 32),
}


def _without(flags: list[str], *names: str) -> list[str]:
    out, skip = [], False
    for flag in flags:
        if skip:
            skip = False
        elif flag in names:
            skip = True
        else:
            out.append(flag)
    return out


# TINY minus its batch and lr flags (each script keeps its recipe), one iteration of one epoch.
SMOKE = _without(TINY, "--batch-size", "--lr", "--lr-milestones") + [
    "--epochs", "1", "--max-iters", "1", "--synthetic-test-size", "16", "--print-freq", "1"]


def smoke_8p() -> list[str]:
    """8p scripts keep their global batch 128/256, split over 2 processes; each run gets its
    own free rendezvous port (other test runs on this machine may hold 29500)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return ["--nproc", "2", "--synthetic-train-size", "512", "--port", str(port)]


def script_env(out_root: Path, device_id: str = "0", env: dict[str, str] | None = None,
               ) -> dict[str, str]:
    env = dict(env or base_env())
    # One thread per process: 2 busy-waiting threads per process on 2 shared cores make
    # these tiny steps tens of times slower.
    env.update(OUTPUT_ROOT=str(out_root), ASCEND_DEVICE_ID=device_id, PYTHON=sys.executable,
               OMP_NUM_THREADS="1")
    return env


def run_script(name: str, args: list[str], env: dict[str, str], cwd: Path = REPO,
               timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(TEST_DIR / name), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def read_case_log(path: Path) -> list[tuple[str, str]]:
    pairs = []
    for line in path.read_text().splitlines():
        key, sep, value = line.partition(" = ")
        assert sep, f"not a 'key = value' line: {line!r}"
        pairs.append((key, value))
    return pairs


def case_logs(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"{NETWORK}_*.log"))


def check_case_log(folder: Path, summary: dict, mode: str, stdout: str) -> dict[str, str]:
    """The package's files: the CaseName log (the ten keys in order, each value from
    summary.json), the loss file (from train_loss.csv) and, for full runs, the perf report."""
    batch, ranks, fps = summary["global_batch_size"], summary["world_size"], summary["fps"]
    case = f"{NETWORK}_bs{batch}_{ranks}p_acc"  # "acc" for performance scripts too
    assert [p.name for p in case_logs(folder)] == [f"{case}.log"]
    pairs = read_case_log(folder / f"{case}.log")
    assert [k for k, _ in pairs] == KEYS
    values = dict(pairs)
    assert fps and fps > 0, summary
    assert values == {
        "Network": NETWORK, "RankSize": str(ranks), "BatchSize": str(batch),
        "DeviceType": platform.machine(), "CaseName": case,
        "ActualFPS": f"{fps:.2f}", "TrainingTime": f"{batch * 1000 / fps:.2f}",
        "TrainAccuracy": f"{100 * summary['best_top1']:.2f}",
        "ActualLoss": f"{summary['final_loss']:.4f}",
        "E2ETrainingTime": str(round(summary["e2e_seconds"])),
    }
    assert f"Final Performance images/sec : {values['ActualFPS']}" in stdout
    assert f"Final Train Accuracy : {values['TrainAccuracy']}" in stdout
    assert f"E2E Training Duration sec : {values['E2ETrainingTime']}" in stdout
    run_dir = Path(summary["best_checkpoint"]).parent
    with open(run_dir / "train_loss.csv") as fh:
        logged = [row["loss"] for row in csv.DictReader(fh)]
    assert logged and (folder / f"train_{case}_loss.txt").read_text().split() == logged
    report = folder / f"train_{case}_perf_report.log"
    assert report.is_file() == (mode == "full")
    if mode == "full":
        lines = dict(line.split(" : ") for line in report.read_text().splitlines())
        history = summary["history"]
        train_time = sum(r["train_seconds"] for r in history)
        assert float(lines["train_training_time"]) == pytest.approx(train_time, abs=1e-3)
        assert float(lines["train_eval_time"]) == pytest.approx(
            sum(r["eval_seconds"] for r in history), abs=1e-3)
        assert float(lines["total_time"]) == pytest.approx(summary["e2e_seconds"], abs=1e-3)
        assert float(lines["training maximum images/sec"]) == pytest.approx(
            max(r["fps"] for r in history), abs=0.01)
        images = summary["iterations"] * batch
        assert float(lines["training average images/sec"]) == pytest.approx(
            images / train_time, rel=1e-3)
        assert float(lines["end to end average images/sec"]) == pytest.approx(
            images / summary["e2e_seconds"], rel=1e-3)
    return values


# the package's four _bs256 scripts -> (mode, cards, the mix recipe they run); two of them run
# below (test_performance_1p_bs256_script_..., test_full_8p_bs256_script_...)
BS256_SCRIPTS = {
    "train_full_1p_bs256.sh": ("full", 1, "resnet50_cifar100_bs256_mix.yaml"),
    "train_performance_1p_bs256.sh": ("performance", 1, "resnet50_cifar100_bs256_mix.yaml"),
    "train_full_8p_bs256.sh": ("full", 8, "resnet50_cifar100_8p_bs2048_mix.yaml"),
    "train_performance_8p_bs256.sh": ("performance", 8, "resnet50_cifar100_8p_bs2048_mix.yaml"),
}


# ours beside the package's: its best recipe at its global batch 2048 on one card (issue 27)
ACCUM_SCRIPTS = {
    "train_full_1p_bs2048_accum.sh": ("full", 1, "resnet50_cifar100_1p_bs2048_accum_mix.yaml"),
}


def test_scripts_are_executable_bash() -> None:
    for name in [*SCRIPTS, *BS256_SCRIPTS, *ACCUM_SCRIPTS, "common.sh", "env_npu.sh"]:
        subprocess.run(["bash", "-n", str(TEST_DIR / name)], check=True)
    for name in [*SCRIPTS, *BS256_SCRIPTS, *ACCUM_SCRIPTS]:
        assert os.access(TEST_DIR / name, os.X_OK), name
    assert sorted(p.name for p in TEST_DIR.glob("train_*.sh")) == sorted(
        [*SCRIPTS, *BS256_SCRIPTS, *ACCUM_SCRIPTS])


def test_accum_script_runs_the_8p_recipe_on_one_card_in_micro_batches_of_256() -> None:
    """The 1p bs2048 script: the 8p bs256 scripts' recipe, 8 micro-batches of 256 a step."""
    from ignite_rn50.config.parsing import load_yaml

    for name, (mode, cards, recipe) in ACCUM_SCRIPTS.items():
        assert (f"MODE={mode} RANK_SIZE={cards} BATCH_PER_DEVICE=2048 RECIPE={recipe}"
                in (TEST_DIR / name).read_text()), name
        ours, theirs = (load_yaml(REPO / "configs" / f) for f in (
            recipe, "resnet50_cifar100_8p_bs2048_mix.yaml"))
        assert ours.pop("accum_steps") == 8 and ours.pop("output_dir") != theirs.pop(
            "output_dir")
        assert ours == theirs and ours["batch_size"] // 8 == 256


def test_bs256_scripts_name_their_mode_cards_and_recipe() -> None:
    for name, (mode, cards, recipe) in BS256_SCRIPTS.items():
        text = (TEST_DIR / name).read_text()
        assert (f"MODE={mode} RANK_SIZE={cards} BATCH_PER_DEVICE=256 RECIPE={recipe}"
                in text), name
        assert (REPO / "configs" / recipe).is_file(), recipe


# cwd: the repo root, test/, or anywhere else (the repo is found from the script's location);
# a non-zero ASCEND_DEVICE_ID names the output folder (and is the ignored --gpu-id on cpu).
@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.distributed)
                                  if SCRIPTS[n][1] == 8 else n for n in SCRIPTS])
def test_script_cpu_smoke(name: str, tmp_path: Path, cifar_dir: Path) -> None:
    mode, nproc, per_device = SCRIPTS[name]
    index = list(SCRIPTS).index(name)
    cwd = (REPO, TEST_DIR, tmp_path)[index % 3]
    device_id = "3" if index % 2 else "0"
    env = script_env(tmp_path / "out", device_id)
    folder = tmp_path / "out" / device_id
    run_dir = folder / f"train_{mode}_{nproc}p_bs{per_device}"
    args = SMOKE + (smoke_8p() if nproc == 8 else [])
    if index == 1:
        # `--data_path DIR` trains on real cifar-100-python files; a user --output-dir wins
        # over the script's and summary.json is read from there.
        run_dir = tmp_path / "mine"
        args = ["--data_path", str(cifar_dir), *args, "--dataset", "cifar100",
                "--output-dir", str(run_dir)]
    if index == 0:   # run it as an executable, from the repo root
        proc = subprocess.run([f"./test/{name}", *args], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=240)
    else:
        proc = run_script(name, args, env, cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    summary = json.loads((run_dir / "summary.json").read_text())
    batch = nproc * per_device   # global: 16/32 on 1p, 128/256 on 8p (here over 2 processes)
    assert (summary["global_batch_size"], summary["world_size"]) == (batch, min(nproc, 2))
    assert summary["device_type"] == "cpu" and summary["epochs_completed"] == 1
    assert summary["dataset"] == ("cifar100" if index == 1 else "synthetic")
    check_case_log(folder, summary, mode, proc.stdout)

    log = (folder / f"train_{device_id}.log").read_text()
    assert "Epoch [1/1] done" in log
    command = log.splitlines()[0]   # the trainer command: script flags, then the user's
    assert f"{RECIPES[per_device]} --batch-size {batch} --nproc {nproc}" in command
    assert ("--epochs 2 --output-dir" in command) == (mode == "performance")
    assert summary["lr_policy"] == ("cosine" if per_device == 32 else "step")
    assert summary["lr"] == (0.2 if per_device == 32 else 0.1)
    assert (f"--gpu-id {device_id}" in command) == (nproc == 1)
    assert command.index("--output-dir") < command.index("--device cpu")
    if index == 1:
        assert f"--data {cifar_dir}" in command and "--download" not in command
    else:   # no --data_path: the seed's automatic download into <repo>/data
        assert f"--data {REPO / 'data'} --download" in command


# fp16 is emulated on the CPU by the stand-in, tens of times slower: fp32 keeps these short.
@pytest.mark.slow
@pytest.mark.parametrize("name", ["train_performance_1p.sh", pytest.param(
    "train_full_8p.sh", marks=pytest.mark.distributed)])
def test_script_npu_standin(name: str, tmp_path: Path, standin_env: dict[str, str]) -> None:
    mode, nproc, per_device = SCRIPTS[name]
    args = _without(SMOKE, "--device") + ["--device", "npu", "--no-amp"]
    args += smoke_8p() if nproc == 8 else []
    proc = run_script(name, args, script_env(tmp_path, "1", standin_env), timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = tmp_path / "1"
    summary = json.loads(
        (folder / f"train_{mode}_{nproc}p_bs{per_device}" / "summary.json").read_text())
    assert summary["device_type"] == "npu"
    if nproc == 1:
        assert summary["device"] == "npu:1"   # ASCEND_DEVICE_ID picks the card
    else:
        assert summary["world_size"] == 2
    check_case_log(folder, summary, mode, proc.stdout)


@pytest.mark.slow
def test_bs32_performance_script_runs_the_cosine_recipe(tmp_path: Path) -> None:
    """The package's bs32 scripts: resnet50_8xb16_cifar100_cos with optimizer.lr=0.2, i.e.
    cosine annealing per epoch from 0.2 to 0, here over the script's own 2 epochs."""
    args = _without(SMOKE, "--epochs", "--max-iters") + ["--max-iters", "2"]
    proc = run_script("train_performance_1p_bs32.sh", args, script_env(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = tmp_path / "0" / "train_performance_1p_bs32"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (config["lr_policy"], config["lr"], config["min_lr"], config["epochs"]) == \
        ("cosine", 0.2, 0.0, 2)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [r["lr"] for r in summary["history"]] == pytest.approx(
        [0.2 * (1 + math.cos(math.pi * e / 2)) / 2 for e in range(2)])  # 0.2, then 0.1
    values = check_case_log(tmp_path / "0", summary, "performance", proc.stdout)
    assert values["CaseName"] == f"{NETWORK}_bs32_1p_acc"
    assert values["TrainAccuracy"] == f"{100 * max(r['val_top1'] for r in summary['history']):.2f}"


# the scripts' smoke flags, with the script's own epochs and two 256-image steps an epoch
BS256 = _without(SMOKE, "--max-iters", "--epochs") + ["--max-iters", "2",
                                                      "--synthetic-train-size", "512"]


def _lrs(run_dir: Path) -> list[tuple[int, int, float]]:
    with open(run_dir / "train_loss.csv") as fh:
        return [(int(r["iteration"]), int(r["epoch"]), float(r["lr"])) for r in csv.DictReader(fh)]


@pytest.mark.slow
def test_performance_1p_bs256_script_runs_the_mix_recipe_all_warm_up(tmp_path: Path) -> None:
    """The package's _perf config: cosine over the 2 epochs run, warm-up over 20 epochs'
    iterations (here 20 x 2): every logged lr is regular(epoch) x the warm-up factor."""
    proc = run_script("train_performance_1p_bs256.sh", BS256, script_env(tmp_path),
                      timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = tmp_path / "0" / "train_performance_1p_bs256"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert {k: config[k] for k in ("batch_size", "lr", "lr_policy", "warmup_epochs",
                                   "warmup_factor", "mixup_alpha", "mixup_prob",
                                   "cutmix_alpha", "cutmix_prob", "label_smoothing",
                                   "epochs")} == {
        "batch_size": 256, "lr": 1.6, "lr_policy": "cosine", "warmup_epochs": 20.0,
        "warmup_factor": 0.001, "mixup_alpha": 1.0, "mixup_prob": 0.5, "cutmix_alpha": 1.0,
        "cutmix_prob": 0.5, "label_smoothing": 0.1, "epochs": 2}
    lrs = _lrs(run_dir)
    assert [i for i, _, _ in lrs] == [1, 2, 3, 4]
    for iteration, epoch, lr in lrs:
        regular = 0.8 * (1 + math.cos(math.pi * (epoch - 1) / 2))
        g = iteration - 1
        assert lr == pytest.approx(regular * (1 - (1 - g / 40) * (1 - 1e-3)), rel=1e-6)
    summary = json.loads((run_dir / "summary.json").read_text())
    values = check_case_log(tmp_path / "0", summary, "performance", proc.stdout)
    assert values["CaseName"] == "Resnet50_cifar_for_PyTorch_bs256_1p_acc"
    assert "training batches mixed" in (run_dir / "train.log").read_text()


@pytest.mark.slow
@pytest.mark.distributed
def test_full_8p_bs256_script_warms_up_then_anneals(tmp_path: Path) -> None:
    """Over 2 processes (global batch still 2048), a 1-epoch warm-up instead of 20: the
    first epoch's lrs rise from 1e-3 x lr, the second's follow the cosine by epoch."""
    args = [*BS256, "--nproc", "2", "--synthetic-train-size", "4096", "--epochs", "2",
            "--warmup-epochs", "1", "--synthetic-test-size", "16"]
    proc = run_script("train_full_8p_bs256.sh", args, script_env(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = tmp_path / "0" / "train_full_8p_bs256"
    lrs = _lrs(run_dir)
    assert lrs[0][2] == pytest.approx(1.6e-3) and lrs[1][2] > lrs[0][2]
    for _, epoch, lr in lrs[2:]:
        assert lr == pytest.approx(0.8 * (1 + math.cos(math.pi * (epoch - 1) / 2)), rel=1e-9)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["global_batch_size"], summary["world_size"]) == (2048, 2)
    values = check_case_log(tmp_path / "0", summary, "full", proc.stdout)
    assert values["CaseName"] == "Resnet50_cifar_for_PyTorch_bs2048_2p_acc"


@pytest.mark.slow
def test_script_precision_on_standin_npu_without_apex(tmp_path: Path,
                                                      standin_env: dict[str, str]) -> None:
    """An NPU without apex runs the package's static loss scale 1024 with native AMP."""
    args = _without(SMOKE, "--device") + ["--device", "npu", "--amp", "--batch-size", "8",
                                          "--synthetic-test-size", "8"]
    proc = run_script("train_performance_1p.sh", args, script_env(tmp_path, "0", standin_env),
                      timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = tmp_path / "0" / "train_performance_1p_bs16"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["precision"] == "native autocast float16, static loss scale 1024"
    assert summary["step_dtype"] == "torch.float16" and summary["optimizer"] == "SGD"
    assert "precision: native autocast float16, static loss scale 1024" in proc.stdout
    state = torch.load(run_dir / "checkpoint_1.pt", map_location="cpu", weights_only=True)
    assert state["scaler"]["scale"] == 1024.0 and state["scaler"]["growth_interval"] > 2**30


def _plant_stale_log(folder: Path, case: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    stale = folder / f"{NETWORK}_{case}.log"
    stale.write_text("".join(f"{key} = 1\n" for key in KEYS))
    return stale


def test_missing_data_path(tmp_path: Path) -> None:
    stale = _plant_stale_log(tmp_path / "0", "bs16_1p_acc")
    missing = tmp_path / "no-such-dir"
    proc = run_script("train_full_1p.sh", [f"--data_path={missing}", *SMOKE],
                      script_env(tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith(f"error: --data_path {missing} does "
                                                     "not exist"), errors
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not stale.exists() and case_logs(tmp_path / "0") == []


def test_training_failure_writes_no_case_log(tmp_path: Path) -> None:
    """The trainer's exit status comes back; no CaseName log, and the earlier one is gone."""
    stale = _plant_stale_log(tmp_path / "0", "bs256_2p_acc")
    args = SMOKE + smoke_8p() + ["--lr", "-1"]
    proc = run_script("train_performance_8p_bs32.sh", args, script_env(tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--lr must be positive" in proc.stdout   # the trainer's own line, via the log
    assert "error: training failed (exit status 2)" in proc.stderr
    assert not stale.exists() and case_logs(tmp_path / "0") == []
    assert "--lr must be positive" in (tmp_path / "0" / "train_0.log").read_text()


ENV_VARS = ("TASK_QUEUE_ENABLE", "HCCL_CONNECT_TIMEOUT", "FAKE_CANN_SOURCED")


def _source_env_npu(env: dict[str, str]) -> subprocess.CompletedProcess:
    # set -eu in the caller: env_npu.sh must neither kill it nor exit.
    script = (f"set -eu; source {TEST_DIR / 'env_npu.sh'}; echo sourced; "
              "for v in " + " ".join(ENV_VARS) + "; do echo \"$v=${!v:-}\"; done; "
              "case $- in *e*u*|*u*e*) echo opts-kept;; esac")
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                          timeout=30)


def test_env_npu_without_cann(tmp_path: Path) -> None:
    env = {k: v for k, v in base_env().items() if k not in ENV_VARS}
    env["CANN_INSTALL_PATH"] = str(tmp_path / "no-cann")
    proc = _source_env_npu(env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.split() == ["sourced", *(f"{v}=" for v in ENV_VARS), "opts-kept"]


def test_env_npu_with_cann(tmp_path: Path) -> None:
    toolkit = tmp_path / "Ascend" / "ascend-toolkit"
    toolkit.mkdir(parents=True)
    # a set_env.sh that trips over the caller's `set -u` and fails, as real ones may
    (toolkit / "set_env.sh").write_text(
        'export FAKE_CANN_SOURCED="$UNSET_BY_ANYONE"yes\nfalse\n')
    env = {k: v for k, v in base_env().items() if k not in ENV_VARS}
    env.update(CANN_INSTALL_PATH=str(tmp_path / "Ascend"), HCCL_CONNECT_TIMEOUT="77")
    proc = _source_env_npu(env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["sourced", "TASK_QUEUE_ENABLE=1",
                                   "HCCL_CONNECT_TIMEOUT=77",  # the user's value is kept
                                   "FAKE_CANN_SOURCED=yes", "opts-kept"]
