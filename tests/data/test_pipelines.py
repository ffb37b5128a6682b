"""The two input pipelines (``data/pipelines.py``): their augmentation statistics, the same
batches for the same epoch, disjoint shards, the device fallback, the last partial batch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ignite_rn50.data import pipelines
from ignite_rn50.data.readers import ImageSet, make_synthetic
from ignite_rn50.data.spec import CIFAR100_MEAN
from tests.helpers import TINY, read_summary, run_cli, run_main


def _column_images(n: int, size: int = 32) -> ImageSet:
    cols = (torch.arange(size) + 1).view(1, 1, size).expand(3, size, size)
    rows_mask = torch.ones(3, size, size, dtype=torch.long)
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


def _offset_stats(batches: list[torch.Tensor], pad: int = 4) -> tuple[np.ndarray, float]:
    """Horizontal offset (0..2 pad) and flip of each crop of a column-pattern image."""
    offs, flips = [], []
    for x in batches:
        for img in x[:, 0, x.shape[-1] // 2].to(torch.int64):  # middle row: col+1 or 0 (pad)
            valid = img > 0
            vals = img[valid]
            flipped = bool(vals[0] > vals[-1])
            seq = img.flip(0) if flipped else img
            nz = torch.nonzero(seq > 0).flatten()
            first_val = int(seq[nz[0]])
            # crop starting at offset o (padded coords) shows column o - pad first
            off = (first_val - 1) + pad - int(nz[0])
            offs.append(off)
            flips.append(flipped)
    return np.array(offs), float(np.mean(flips))


def _uint8_from_normalized(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(pipelines.CIFAR100.mean).view(1, 3, 1, 1)
    std = torch.tensor(pipelines.CIFAR100.std).view(1, 3, 1, 1)
    return ((x * std + mean) * 255).round().to(torch.int64)


def _feed(kind: str, data: ImageSet, batch: int) -> pipelines.TrainData:
    """Epoch 1 of the training pipeline ``kind`` over ``data`` (seed 3)."""
    if kind == "device":
        feed: pipelines.TrainData = pipelines.DeviceTrainData(data, torch.device("cpu"),
                                                              pipelines.Feed(batch, seed=3))
    else:
        feed = pipelines.LoaderTrainData(data, pipelines.Feed(batch, seed=3), num_workers=0,
                                         pin_memory=False)
    feed.set_epoch(1)
    return feed


@pytest.mark.parametrize("kind", ["device", "torchvision"])
def test_pipelines_draw_offsets_uniform_0_8_and_flip_half(kind: str) -> None:
    data = _column_images(2048)
    feed = _feed(kind, data, 256)
    batches = [_uint8_from_normalized(x) for x, _ in feed]
    offs, flip_rate = _offset_stats(batches)
    counts = np.bincount(offs, minlength=9)
    assert offs.min() == 0 and offs.max() == 8 and len(counts) == 9
    expected = len(offs) / 9
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 26.1, counts  # chi-square, 8 dof, p = 0.001
    assert abs(flip_rate - 0.5) < 0.05


@pytest.mark.parametrize("kind", ["device", "torchvision"])
def test_the_pad_and_crop_scales_with_the_image_size(kind: str) -> None:
    """--image-size 64: padding 8 (the package's 4 at 32 px), crop corners uniform on 0..16."""
    assert [pipelines.pad_for(n) for n in (12, 32, 64, 96)] == [1, 4, 8, 12]
    data = _column_images(512, size=64)
    feed = _feed(kind, data, 128)
    batches = [_uint8_from_normalized(x) for x, _ in feed]
    assert batches[0].shape[-2:] == (64, 64)
    offs, _ = _offset_stats(batches, pad=8)
    assert sorted(set(offs.tolist())) == list(range(17))  # each of 17 drawn ~30 times of 512


@pytest.mark.parametrize("kind", ["device", "torchvision"])
def test_a_dataset_that_forbids_flips_is_never_mirrored(kind: str) -> None:
    """The flip is the dataset's to allow (``ImageSet.flip``, from its spec); the device
    pipeline still draws it, so the crops are those a flipping dataset would get."""
    data = _column_images(512)
    data.flip = False
    feed = _feed(kind, data, 128)
    offs, flip_rate = _offset_stats([_uint8_from_normalized(x) for x, _ in feed])
    assert flip_rate == 0 and offs.min() == 0 and offs.max() == 8
    if kind == "device":
        data.flip = True
        flipping = pipelines.DeviceTrainData(data, torch.device("cpu"),
                                             pipelines.Feed(128, seed=3))
        flipping.set_epoch(1)
        same, _ = _offset_stats([_uint8_from_normalized(x) for x, _ in flipping])
        assert np.array_equal(same, offs)


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_torchvision_pipeline_trains(tmp_path: Path) -> None:
    out = tmp_path / "tv"
    proc = run_cli([*TINY, "--epochs", "1", "--data-pipeline", "torchvision",
                    "--num-workers", "1", "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_summary(out)["iterations"] == 8


class _TorchvisionDraws(pipelines.DeviceTrainData):
    """The device pipeline drawing as the torchvision pipeline does with no workers:
    DistributedSampler's order (seed + epoch), then per image in that order RandomCrop's two
    ``torch.randint`` and RandomHorizontalFlip's ``torch.rand`` on the global generator."""

    def epoch_draws(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = len(self.labels)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed +
                                                                          self.epoch))
        kept = torch.get_rng_state()
        torch.manual_seed(pipelines.epoch_seed(self.seed, self.rank, self.epoch))
        span = 2 * pipelines.pad_for(self.images.shape[-1]) + 1
        offsets, flips = torch.zeros(n, 2, dtype=torch.long), torch.zeros(n, dtype=torch.bool)
        for i in order.tolist():
            offsets[i, 0] = torch.randint(0, span, (1,)).item()
            offsets[i, 1] = torch.randint(0, span, (1,)).item()
            flips[i] = bool(torch.rand(1) < 0.5)
        torch.set_rng_state(kept)
        return order, offsets, flips


def test_device_pipeline_given_torchvisions_draws_yields_its_batches_bit_for_bit() -> None:
    """Issue 22: the two pipelines differ in their random draws and in nothing else (both
    draws are a uniform order and independent uniform crops and flips). A check-6 run of the
    mix recipe with these draws reproduced the torchvision run's ten top-1 figures exactly."""
    data = make_synthetic(70, 10, 32, split_seed=3)
    feed = pipelines.Feed(16, seed=4)
    device = _TorchvisionDraws(data, torch.device("cpu"), feed)
    loader = pipelines.LoaderTrainData(data, feed, num_workers=0, pin_memory=False)
    for epoch in (1, 2, 3):
        device.set_epoch(epoch)
        loader.set_epoch(epoch)
        pairs = list(zip(device, loader, strict=True))
        assert len(pairs) == 4
        for (a, ya), (b, yb) in pairs:
            assert torch.equal(a, b) and torch.equal(ya, yb)
