"""Data: real cifar-100-python files, validation errors, and the two pipelines' statistics."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ignite_rn50.data import pipelines
from ignite_rn50.data.readers import ImageSet, load_datasets, make_synthetic
from ignite_rn50.data.registry import CIFAR100_MEAN, DATASETS
from ignite_rn50.errors import UserError

from .conftest import TINY, assert_one_line_error, run_cli, run_main, write_cifar, write_cifar10


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


# --- pipelines --------------------------------------------------------------------------------

def _column_images(n: int) -> ImageSet:
    cols = (torch.arange(32) + 1).view(1, 1, 32).expand(3, 32, 32)
    rows_mask = torch.ones(3, 32, 32, dtype=torch.long)
    images = torch.stack([cols * rows_mask] * n).to(torch.uint8)
    return ImageSet(images, torch.arange(n) % 10, 10)


def test_device_crop_flip_reads_back_offsets_and_flips() -> None:
    images = _column_images(6)
    offsets = torch.tensor([[0, 0], [8, 8], [4, 4], [2, 7], [8, 0], [3, 5]])
    flips = torch.tensor([False, True, False, True, False, True])
    out = pipelines.crop_flip(images.images, offsets, flips)
    # offset o means the crop starts at o in the padded image: shift 4 - o
    for i in range(6):
        col = out[i, 0, 16].to(torch.int64)  # a middle row: only column pattern matters
        expected = torch.arange(32) + offsets[i, 1] - 4 + 1
        expected = torch.where((expected >= 1) & (expected <= 32), expected, 0)
        if flips[i]:
            expected = expected.flip(0)
        assert torch.equal(col, expected), i
        rows_valid = (out[i, 0, :, 16] > 0) | (out[i, 0, :, 15] > 0) | (out[i, 0, :, 17] > 0)
        assert int(rows_valid.sum()) == 32 - abs(int(offsets[i, 0]) - 4)


def _offset_stats(batches: list[torch.Tensor]) -> tuple[np.ndarray, float]:
    """Horizontal offset (0..8) and flip of each crop of a column-pattern image."""
    offs, flips = [], []
    for x in batches:
        for img in x[:, 0, 16].to(torch.int64):  # middle row, values col+1 or 0 (padding)
            valid = img > 0
            vals = img[valid]
            flipped = bool(vals[0] > vals[-1])
            seq = img.flip(0) if flipped else img
            nz = torch.nonzero(seq > 0).flatten()
            first_val = int(seq[nz[0]])
            # crop starting at offset o (padded coords) shows column o - 4 first
            off = (first_val - 1) + 4 - int(nz[0])
            offs.append(off)
            flips.append(flipped)
    return np.array(offs), float(np.mean(flips))


def _uint8_from_normalized(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(pipelines.CIFAR100.mean).view(1, 3, 1, 1)
    std = torch.tensor(pipelines.CIFAR100.std).view(1, 3, 1, 1)
    return ((x * std + mean) * 255).round().to(torch.int64)


@pytest.mark.parametrize("kind", ["device", "torchvision"])
def test_pipelines_draw_offsets_uniform_0_8_and_flip_half(kind: str) -> None:
    data = _column_images(2048)
    if kind == "device":
        feed = pipelines.DeviceTrainData(data, torch.device("cpu"), pipelines.Feed(256, seed=3))
    else:
        feed = pipelines.LoaderTrainData(data, pipelines.Feed(256, seed=3), num_workers=0,
                                        pin_memory=False)
    feed.set_epoch(1)
    batches = [_uint8_from_normalized(x) for x, _ in feed]
    offs, flip_rate = _offset_stats(batches)
    counts = np.bincount(offs, minlength=9)
    assert offs.min() == 0 and offs.max() == 8 and len(counts) == 9
    expected = len(offs) / 9
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 26.1, counts  # chi-square, 8 dof, p = 0.001
    assert abs(flip_rate - 0.5) < 0.05


def test_eval_inputs_identical_in_both_pipelines() -> None:
    data = make_synthetic(50, 10, 32, split_seed=5)
    device_batches = pipelines.device_eval_batches(data, torch.device("cpu"), 16, rank=0,
                                                  world_size=1)
    loader = pipelines.loader_eval_batches(data, 16, rank=0, world_size=1, num_workers=0,
                                          pin_memory=False)
    for (a, ya), (b, yb) in zip(device_batches, loader, strict=True):
        assert torch.equal(a, b) and torch.equal(ya, yb)


def test_normalisation_statistics() -> None:
    mean = torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1)
    images = mean.round().to(torch.uint8).expand(4, 3, 8, 8)
    out = pipelines.normalize(images)
    assert out.abs().max() < 0.01  # the mean maps to ~0
    white = pipelines.normalize(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    assert white[0, 0, 0, 0].item() == pytest.approx((255 - 129.304) / 68.170, rel=1e-5)


def test_same_epoch_same_batches_other_epoch_differs() -> None:
    data = make_synthetic(256, 10, 8, split_seed=1)
    feed = pipelines.DeviceTrainData(data, torch.device("cpu"), pipelines.Feed(32))
    feed.set_epoch(2)
    first = [x.clone() for x, _ in feed]
    feed.set_epoch(2, start_batch=3)
    resumed = [x.clone() for x, _ in feed]
    feed.set_epoch(3)
    other = [x.clone() for x, _ in feed]
    assert len(first) == 8 and all(torch.equal(a, b) for a, b in zip(first[3:], resumed,
                                                                       strict=True))
    assert not torch.equal(first[0], other[0])


def test_shards_are_disjoint_and_cover_evaluation_once() -> None:
    data = make_synthetic(101, 10, 8, split_seed=2)
    data.labels = torch.arange(101)  # identities to follow through the shards
    seen = torch.cat([torch.cat([y for _, y in pipelines.device_eval_batches(
        data, torch.device("cpu"), 16, rank=r, world_size=3)]) for r in range(3)])
    assert sorted(seen.tolist()) == list(range(101))
    parts = [pipelines.DeviceTrainData(data, torch.device("cpu"),
                                      pipelines.Feed(8, rank=r, world_size=3)) for r in range(3)]
    owned = [set(p.labels.tolist()) for p in parts]
    assert all(len(o) == 33 for o in owned) and not (owned[0] & owned[1] | owned[1] & owned[2]
                                                     | owned[0] & owned[2])
    loaders = [pipelines.LoaderTrainData(data, pipelines.Feed(8, rank=r, world_size=3),
                                        num_workers=0, pin_memory=False) for r in range(3)]
    assert [set(lo.loader.dataset.labels.tolist()) for lo in loaders] == owned


def test_auto_pipeline_falls_back_when_data_would_crowd_the_device() -> None:
    train = make_synthetic(1000, 10, 32, split_seed=1)  # 3.07 MB uint8
    test = make_synthetic(100, 10, 32, split_seed=2)  # 1.23 MB as float32
    assert pipelines.fits_on_device(train, test, 1, None)  # cpu: always
    assert pipelines.fits_on_device(train, test, 1, 20_000_000)
    assert not pipelines.fits_on_device(train, test, 1, 16_000_000)
    assert pipelines.fits_on_device(train, test, 2, 10_000_000)  # each rank holds half


# --- CIFAR-10, the second entry of the dataset registry ---------------------------------------

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


def test_no_drop_last_trains_on_the_last_partial_batch(tmp_path: Path) -> None:
    """mmcls's loader keeps an epoch's last partial batch; --no-drop-last does the same in
    both pipelines (and with mixing: the partial batch mixes within itself)."""
    data = make_synthetic(240, 10, 8, split_seed=1)
    for drop, sizes in ((True, [32] * 7), (False, [32] * 7 + [16])):
        feed = pipelines.Feed(32, drop_last=drop)
        device = pipelines.DeviceTrainData(data, torch.device("cpu"), feed)
        loader = pipelines.LoaderTrainData(data, feed, num_workers=0, pin_memory=False)
        for train in (device, loader):
            train.set_epoch(1)
            assert len(train) == len(sizes) and [len(y) for _, y in train] == sizes
    out = tmp_path / "keep"
    proc = run_main([*TINY, "--synthetic-train-size", "240", "--no-drop-last", "--mixup-alpha",
                    "1", "--cutmix-alpha", "1", "--epochs", "1", "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 8 and summary["epochs_completed"] == 1
