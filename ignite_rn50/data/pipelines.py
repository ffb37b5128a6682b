"""Input pipelines: batched augmentation on the training device, or torchvision's DataLoader.

Both yield ``(images, labels)`` batches and expose ``set_epoch(epoch, start_batch)`` so that
every epoch's order and augmentation depend only on (seed, rank, epoch): resuming at an
epoch boundary, or mid-epoch from ``start_batch``, replays exactly the batches an
uninterrupted run would have seen (exactly for the device pipeline; the torchvision path
replays the same images, with fresh augmentation draws from its workers).

Augmentation is the reference one: random crop with 4 px zero padding (at 32x32), horizontal
flip with p=0.5 where the dataset allows it (its spec's ``flip``), normalisation by the
dataset's mean/std (``ImageSet.mean``/``std``). Both pipelines
draw crop offsets uniformly from 0..8 and flips with rate 0.5, and give bit-identical
evaluation inputs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from ignite_rn50.data.spec import CIFAR100_MEAN, CIFAR100_STD, ImageFiles, ImageSet
from ignite_rn50.errors import UserError
from ignite_rn50.system import device as dev

PAD = 4  # at 32x32, the reference; smaller (synthetic) images pad in proportion


def pad_for(image_size: int) -> int:
    return max(1, PAD * image_size // 32)


@dataclass(frozen=True)
class Normalization:
    """A dataset's per-channel statistics on 0-1 values, as torchvision's Normalize takes."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, data: ImageSet) -> Normalization:
        return cls(tuple(m / 255 for m in data.mean), tuple(s / 255 for s in data.std))


CIFAR100 = Normalization(tuple(m / 255 for m in CIFAR100_MEAN),
                         tuple(s / 255 for s in CIFAR100_STD))


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """Independent streams per (seed, global rank, epoch): no collisions across nodes."""
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])


def fits_on_device(train: ImageSet, test: ImageSet, world_size: int,
                   free_bytes: int | None) -> bool:
    """auto: the device pipeline unless this rank's share (uint8 train shard + float32 test
    shard) would take more than a quarter of the device's free memory."""
    if free_bytes is None:
        return True
    need = (train.images.numel() + 4 * test.images.numel()) / world_size
    return need <= free_bytes / 4


class TrainData(Protocol):
    def set_epoch(self, epoch: int, start_batch: int = 0) -> None: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


_STATS: dict[tuple[Normalization, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}


def _stats(norm: Normalization, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean/std tensors made once per device: building them per batch is a blocking H2D copy."""
    if (norm, device) not in _STATS:
        mean = torch.as_tensor(norm.mean, dtype=torch.float32, device=device)[:, None, None]
        std = torch.as_tensor(norm.std, dtype=torch.float32, device=device)[:, None, None]
        _STATS[norm, device] = (mean, std)
    return _STATS[norm, device]


def normalize(images: torch.Tensor, norm: Normalization = CIFAR100) -> torch.Tensor:
    """uint8 -> float normalised, with exactly torchvision's ToTensor + Normalize arithmetic."""
    x = images.to(torch.float32).div(255)
    mean, std = _stats(norm, x.device)
    return x.sub_(mean).div_(std)


def crop_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Batched RandomCrop(padding) + RandomHorizontalFlip as one gather over flat pixels.

    ``offsets`` [B, 2] in 0..2*pad are the crop's top-left corner in the padded image,
    ``flips`` [B] bool mirror the crop. Returns uint8 [B, C, H, W], contiguous.
    """
    b, c, h, w = images.shape
    pad = pad_for(w)
    padded = F.pad(images, (pad, pad, pad, pad)).flatten(2)  # [B, C, Hp*Wp]
    rows = offsets[:, 0, None] + torch.arange(h, device=images.device)
    cols = offsets[:, 1, None] + torch.arange(w, device=images.device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    index = (rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]).flatten(1)  # [B, H*W]
    out = padded.gather(2, index[:, None, :].expand(b, c, h * w))
    return out.view(b, c, h, w)


@dataclass(frozen=True)
class Feed:
    """How a rank draws its training batches: its place among the processes, the batch per
    process, the seed its shard and epochs derive from, and the --max-iters cap."""

    batch_size: int
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    max_batches: int | None = None
    drop_last: bool = True  # False: the last partial batch trains too (mmcls's loader)

    def batches_in(self, per_rank: int, total: int) -> int:
        """Batches per epoch from ``per_rank`` images (every rank the same count)."""
        if per_rank < self.batch_size:
            raise ValueError(f"{total} training images over {self.world_size} process(es) "
                             f"leave {per_rank} per process, fewer than the per-process batch "
                             f"{self.batch_size}")
        count = per_rank // self.batch_size if self.drop_last else -(-per_rank //
                                                                     self.batch_size)
        return min(count, self.max_batches) if self.max_batches else count


def _shard(size: int, rank: int, world_size: int, seed: int) -> torch.Tensor:
    """This rank's fixed share of a seeded permutation; every rank gets the same count."""
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    return order[rank::world_size][:size // world_size]


class DeviceTrainData:
    """This rank's shard held once on the device as uint8; one H2D copy of indices per epoch.

    Shards are fixed (a seeded permutation split r::world), shuffled within each epoch, so
    no rank stores more than its share of the data (the torchvision path shards the same way).
    """

    def __init__(self, data: ImageSet, device: torch.device, feed: Feed,
                 channels_last: bool = False) -> None:
        shard = _shard(len(data), feed.rank, feed.world_size, feed.seed)
        self.images = data.images[shard].to(device)
        self.labels = data.labels[shard].to(device)
        self.device, self.batch_size, self.rank, self.seed = (device, feed.batch_size,
                                                              feed.rank, feed.seed)
        self.norm, self.flip = Normalization.of(data), data.flip
        self.memory_format = dev.memory_format(channels_last)
        # every rank gets the same number of batches (the smallest shard decides): DDP needs it
        self.num_batches = feed.batches_in(len(data) // feed.world_size, len(data))
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.num_batches

    def epoch_draws(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This epoch's order of the shard and each image's crop corner and flip, on the host.
        Apart from ``__iter__`` so that another stream's draws can be handed in: given the
        torchvision pipeline's, this pipeline yields its batches bit for bit (tested)."""
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.rank, self.epoch))
        n = len(self.labels)
        perm = torch.randperm(n, generator=gen)
        offsets = torch.randint(0, 2 * pad_for(self.images.shape[-1]) + 1, (n, 2),
                                generator=gen)
        flips = torch.rand(n, generator=gen) < 0.5  # drawn either way: the same stream
        return perm, offsets, flips

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm, offsets, flips = self.epoch_draws()
        if not self.flip:
            flips = torch.zeros_like(flips)
        perm, offsets, flips = (t.to(self.device, non_blocking=True)
                                for t in (perm, offsets, flips))
        start, self.start_batch = self.start_batch, 0
        bs = self.batch_size
        for b in range(start, self.num_batches):
            idx = perm[b * bs:(b + 1) * bs]
            images = crop_flip(self.images[idx], offsets[idx], flips[idx])
            x = normalize(images, self.norm).contiguous(memory_format=self.memory_format)
            yield x, self.labels[idx]


def device_eval_batches(data: ImageSet, device: torch.device, batch_size: int, *, rank: int,
                        world_size: int, channels_last: bool = False) -> list:
    """Every test image exactly once over all ranks (r::world, no padding), normalised once."""
    fmt = dev.memory_format(channels_last)
    images = data.images[rank::world_size]
    labels = data.labels[rank::world_size]
    norm = Normalization.of(data)
    return [(normalize(images[i:i + batch_size].to(device), norm).contiguous(memory_format=fmt),
             labels[i:i + batch_size].to(device))
            for i in range(0, len(labels), batch_size)]


# --- torchvision DataLoader path --------------------------------------------------------------

class _PILDataset(Dataset):
    """Each image as a PIL image through ``transform``: from the uint8 tensor, or, for a set
    left in its files, read from its file here, in the DataLoader's worker (a file that does
    not decode gives the line naming it instead, which ``_collate`` and ``_Named`` carry to
    the main process: an exception in a worker would reach the user as a traceback)."""

    def __init__(self, data: ImageSet, transform) -> None:
        self.files = data.images if isinstance(data.images, ImageFiles) else None
        self.images = None if self.files is not None else data.images.permute(0, 2, 3,
                                                                             1).numpy()
        self.labels = data.labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        if self.files is not None:
            image = self.files.load(i)
            if isinstance(image, str):
                return image, self.labels[i]
        else:
            from PIL import Image

            image = Image.fromarray(self.images[i])  # HWC view of the uint8 tensor
        return self.transform(image), self.labels[i]


def _collate(items: list):
    """torch's default_collate, or the line naming the batch's first unreadable file."""
    bad = next((x for x, _ in items if isinstance(x, str)), None)
    return bad if bad is not None else default_collate(items)


class _Named:
    """A DataLoader's batches, with a file that does not decode raised as one UserError."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            if isinstance(batch, str):
                raise UserError(batch)
            yield batch


def torchvision_transforms(data: ImageSet, train: bool):
    from torchvision import transforms as T

    norm = Normalization.of(data)
    tail = [T.ToTensor(), T.Normalize(norm.mean, norm.std)]
    if not train:
        return T.Compose(tail)
    image_size = data.image_size
    flip = [T.RandomHorizontalFlip()] if data.flip else []
    return T.Compose([T.RandomCrop(image_size, padding=pad_for(image_size)), *flip, *tail])


class _ResumableSampler(DistributedSampler):
    """DistributedSampler that can start mid-epoch: torch's cannot skip consumed indices."""

    skip = 0

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return super().__len__() - self.skip


class LoaderTrainData:
    """torchvision's classic path: PIL transforms in DataLoader worker processes, which also
    read the images from their files where the set was left in them (``ImageFiles``)."""

    def __init__(self, data: ImageSet, feed: Feed, *, num_workers: int,
                 pin_memory: bool) -> None:
        shard = _shard(len(data), feed.rank, feed.world_size, feed.seed)
        dataset = _PILDataset(data.take(shard), torchvision_transforms(data, train=True))
        self.sampler = _ResumableSampler(dataset, num_replicas=1, rank=0, shuffle=True,
                                         seed=feed.seed + feed.rank, drop_last=True)
        self.num_batches = feed.batches_in(len(self.sampler), len(data))
        self.generator = torch.Generator()
        self.loader = DataLoader(dataset, batch_size=feed.batch_size, sampler=self.sampler,
                                 num_workers=num_workers, pin_memory=pin_memory,
                                 drop_last=feed.drop_last, collate_fn=_collate,
                                 generator=self.generator,
                                 persistent_workers=False)
        self.batch_size, self.rank, self.seed, self.num_workers = (feed.batch_size, feed.rank,
                                                                   feed.seed, num_workers)
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.sampler.skip = start_batch * self.batch_size
        self.start_batch = start_batch
        seed = epoch_seed(self.seed, self.rank, epoch)
        self.generator.manual_seed(seed)  # worker seeds derive from it
        if self.num_workers == 0:
            torch.manual_seed(seed)  # transforms then run here, on the global generator

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        remaining = self.num_batches - self.start_batch
        self.start_batch = 0
        return itertools.islice(iter(_Named(self.loader)), remaining)


def loader_eval_batches(data: ImageSet, batch_size: int, *, rank: int, world_size: int,
                        num_workers: int, pin_memory: bool) -> _Named:
    dataset = _PILDataset(data, torchvision_transforms(data, train=False))
    subset = torch.utils.data.Subset(dataset, range(rank, len(dataset), world_size))
    return _Named(DataLoader(subset, batch_size=batch_size, shuffle=False,
                             num_workers=num_workers, pin_memory=pin_memory,
                             collate_fn=_collate))
