"""Reading the datasets (``data/readers.py``, ``data/registry.py``): real cifar-100-python and
cifar-10-batches-py files, their validation errors, --download, and runs on them."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from ignite_rn50.data import pipelines
from ignite_rn50.data.readers import ImageSet, load_datasets
from ignite_rn50.data.registry import DATASETS
from ignite_rn50.errors import UserError
from tests.helpers import TINY, assert_one_line_error, run_cli, run_main, write_cifar, write_cifar10


def load_cifar(path: Path) -> tuple[ImageSet, ImageSet]:
    return load_datasets(DATASETS["cifar100"], str(path), None)  # type: ignore[arg-type]


@pytest.mark.parametrize("use_parent", [True, False])
def test_loads_folder_or_parent(tmp_path: Path, use_parent: bool) -> None:
    folder = write_cifar(tmp_path, n_train=40, n_test=24)
    train, test = load_cifar(tmp_path if use_parent else folder)
    assert train.images.shape == (40, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.labels.shape == (24,) and test.num_classes == 100
    # CHW order as in the official files: channel 0 is the first 1024 bytes
    raw = pickle.load(open(folder / "train", "rb"), encoding="latin1")
    assert torch.equal(train.images[3, 1].flatten(), torch.from_numpy(raw["data"][3, 1024:2048]))
    assert train.labels.tolist() == raw["fine_labels"]


def _corrupt(folder: Path, how: str) -> None:
    path = folder / "train"
    obj = pickle.load(open(path, "rb"), encoding="latin1")
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:500])
        return
    if how == "garbage":
        path.write_bytes(b"this is not a pickle at all")
        return
    if how == "shape":
        obj["data"] = obj["data"][:, :1000]
    elif how == "labels":
        obj["fine_labels"][0] = 100
    elif how == "cifar10":
        obj["labels"] = obj.pop("fine_labels")
    elif how == "count":
        obj["fine_labels"] = obj["fine_labels"][:-1]
    pickle.dump(obj, open(path, "wb"))


@pytest.mark.parametrize("how, needle", [
    ("truncated", "truncated or not a CIFAR-100 pickle"),
    ("garbage", "truncated or not a CIFAR-100 pickle"),
    ("shape", "expected (N, 3072)"),
    ("labels", "labels must be integers in 0..99"),
    ("cifar10", "lacks fine_labels"),
    ("count", "labels for"),
])
def test_bad_files_clear_errors(tmp_path: Path, how: str, needle: str) -> None:
    folder = write_cifar(tmp_path)
    _corrupt(folder, how)
    with pytest.raises(UserError) as info:
        load_cifar(tmp_path)
    assert needle in str(info.value) and str(folder / "train") in str(info.value)


def test_wrong_layout_and_missing_path(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no CIFAR-100"):
        load_cifar(tmp_path / "empty")
    with pytest.raises(UserError, match="does not exist"):
        load_cifar(tmp_path / "nope")


def test_cli_bad_data_exit_2(tmp_path: Path) -> None:
    base = [*TINY, "--dataset", "cifar100"]
    assert_one_line_error(run_main([*base, "--data", str(tmp_path / "missing"),
                                   "--output-dir", str(tmp_path / "o")]),
                          "does not exist", "--data")
    folder = write_cifar(tmp_path / "d")
    _corrupt(folder, "truncated")
    assert_one_line_error(run_main([*base, "--data", str(tmp_path / "d"),
                                   "--output-dir", str(tmp_path / "o2")]), "truncated")


@pytest.mark.parametrize("dataset, name, archive, folder", [
    ("cifar100", "CIFAR-100", "cifar-100-python.tar.gz", "cifar-100-python"),
    ("cifar10", "CIFAR-10", "cifar-10-python.tar.gz", "cifar-10-batches-py")])
def test_download_offline_names_the_url_and_where_to_put_files(
        tmp_path: Path, dataset: str, name: str, archive: str, folder: str) -> None:
    proc = run_cli(["--dataset", dataset, "--download", "--data", str(tmp_path / "dl"),
                    "--device", "cpu", "--loggers", "--output-dir", str(tmp_path / "o")],
                   timeout=240)
    if proc.returncode == 0:
        pytest.skip("this machine reached the internet")
    line = assert_one_line_error(proc, f"could not download {name} from "
                                       f"https://www.cs.toronto.edu/~kriz/{archive}")
    assert f"{archive} by hand" in line and folder in line and str(tmp_path / "dl") in line


@pytest.mark.slow
def test_trains_on_cifar_files_subset(tmp_path: Path) -> None:
    write_cifar(tmp_path / "d", n_train=96, n_test=40)
    base = [*TINY, "--dataset", "cifar100"]
    proc = run_cli([*base, "--data", str(tmp_path / "d"), "--epochs", "1",
                    "--output-dir", str(tmp_path / "o")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["epochs_completed"] == 1 and summary["dataset"] == "cifar100"
    assert summary["iterations"] == 96 // 32


def test_cifar10_reads_its_five_batches_with_its_statistics(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path, per_batch=12, n_test=20)
    spec = DATASETS["cifar10"]
    for where in (tmp_path, folder):  # the folder itself or its parent
        train, test = load_datasets(spec, str(where), None)  # type: ignore[arg-type]
        assert (len(train), len(test), train.num_classes) == (60, 20, 10)
    raw = pickle.load(open(folder / "data_batch_3", "rb"), encoding="latin1")
    assert torch.equal(train.images[24:36].flatten(1), torch.from_numpy(raw["data"]))
    assert train.labels[24:36].tolist() == raw["labels"]
    norm = pipelines.Normalization.of(train)
    assert norm.mean == pytest.approx((125.307 / 255, 122.961 / 255, 113.8575 / 255))
    assert norm.std == pytest.approx((51.5865 / 255, 50.847 / 255, 51.255 / 255))
    x = pipelines.device_eval_batches(test, torch.device("cpu"), 20, rank=0, world_size=1)[0][0]
    expected = (test.images.float() / 255 - torch.tensor(norm.mean).view(1, 3, 1, 1)) / \
        torch.tensor(norm.std).view(1, 3, 1, 1)
    assert torch.allclose(x, expected, atol=1e-6)


@pytest.mark.slow
def test_cifar10_trains_and_evaluates_end_to_end(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "d", per_batch=32, n_test=40)
    out = tmp_path / "run"
    base = [*TINY, "--dataset", "cifar10", "--data", str(tmp_path / "d")]
    proc = run_main([*base, "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "cifar10" and summary["epochs_completed"] == 2
    assert summary["iterations"] == 2 * (160 // 32)
    state = torch.load(out / "checkpoint_2.pt", map_location="cpu", weights_only=True)
    assert state["model"]["fc.weight"].shape == (10, 512)
    done = run_main(["--checkpoint", str(out / "checkpoint_2.pt"), "--config",
                     str(out / "config.yaml")], module="ignite_rn50.evaluate")
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith(f"top1={100 * summary['final_top1']:.4f} ") and last.endswith(
        "images=40"), last


def test_a_cifar10_folder_with_the_cifar100_flag_names_the_fix(
        tmp_path: Path) -> None:
    write_cifar10(tmp_path / "d")
    line = assert_one_line_error(run_main([*TINY, "--dataset", "cifar100", "--data",
                                          str(tmp_path / "d"), "--output-dir",
                                          str(tmp_path / "o")]), "holds no CIFAR-100")
    assert "it holds CIFAR-10: pass --dataset cifar10" in line


def test_download_without_data_is_one_line(tmp_path: Path) -> None:
    for dataset, folder in (("cifar100", "cifar-100-python"), ("cifar10", "cifar-10-batches-py")):
        line = assert_one_line_error(run_cli(["--dataset", dataset, "--download", "--output-dir",
                                              str(tmp_path / "o")]), "--download needs --data")
        assert folder in line
    assert not (tmp_path / "o").exists()


def test_empty_data_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_main([*TINY, "--dataset", "cifar100", "--data",
                                   str(tmp_path / "empty"), "--output-dir",
                                   str(tmp_path / "o")]), "holds no CIFAR-100", "nothing")
