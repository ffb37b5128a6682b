"""Splits read from image files (``ImageFiles``, see ``spec.py``): decoded into the uint8
tensor the device pipeline takes, or left in their files for the torchvision pipeline, whose
workers read each where it is used; checked either way before a run starts; and their
per-channel statistics, from a tensor or streamed from the files (one computation, so both
give the same numbers).

Each pass over the files runs in ``workers`` DataLoader processes, in the files' order;
the first file that does not decode stops it with the one line naming it. Plain at the top
level (``folder.py`` is listed for ``--help``); torch is imported where it runs.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from ignite_rn50.data.spec import ImageFiles, ImageSet, Stats
from ignite_rn50.errors import UserError

if TYPE_CHECKING:
    import torch

BATCH = 64  # files per DataLoader batch


class Decoded:
    """File ``i`` as uint8 [3, size, size], or the line naming it where it does not decode;
    with ``verify_only``, PIL's check of the file's structure instead (no decoding: how a
    split left in its files is checked up front) and None."""

    def __init__(self, files: ImageFiles, verify_only: bool = False) -> None:
        self.files, self.verify_only = files, verify_only

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Any:
        if self.verify_only:
            return self.files.check(i)
        from torchvision.transforms.functional import pil_to_tensor

        image = self.files.load(i)
        return image if isinstance(image, str) else pil_to_tensor(image)


def _passes(files: ImageFiles, workers: int, verify_only: bool) -> Iterator[list]:
    from torch.utils.data import DataLoader

    loader = DataLoader(Decoded(files, verify_only), batch_size=BATCH, num_workers=workers,
                        collate_fn=list)
    for batch in loader:
        bad = next((item for item in batch if isinstance(item, str)), None)
        if bad is not None:
            raise UserError(bad)
        yield batch


def decoded_batches(files: ImageFiles, workers: int) -> Iterator[torch.Tensor]:
    """uint8 [<=64, 3, size, size] batches, in the files' order."""
    import torch

    for batch in _passes(files, workers, verify_only=False):
        yield torch.stack(batch)


def decode(files: ImageFiles, workers: int) -> torch.Tensor:
    """uint8 [N, 3, size, size], the whole split in memory."""
    import torch

    out = torch.empty(files.shape, dtype=torch.uint8)
    done = 0
    for batch in decoded_batches(files, workers):
        out[done:done + len(batch)] = batch
        done += len(batch)
    return out


def verify(files: ImageFiles, workers: int) -> None:
    """Every file opens and passes PIL's ``verify`` (headers, and a PNG's checksums): what
    is checked of a split left in its files, before the run starts, without decoding it. A
    file that passes and still fails to decode is named when a worker reads it."""
    for _ in _passes(files, workers, verify_only=True):
        pass


def in_memory(data: ImageSet, workers: int) -> ImageSet:
    """``data`` with its images decoded (the device pipeline's), if they are files."""
    if isinstance(data.images, ImageFiles):
        return replace(data, images=decode(data.images, workers))
    return data


def chunks(images: torch.Tensor | ImageFiles, workers: int) -> Iterable[torch.Tensor]:
    """uint8 chunks of a split: of the tensor, or decoded from the files, never all held."""
    if isinstance(images, ImageFiles):
        return decoded_batches(images, workers)
    return images.split(1024)


def statistics(parts: Iterable[torch.Tensor]) -> tuple[Stats, Stats]:
    """Per-channel mean and (population) std on 0-255 of uint8 images given in chunks (see
    ``chunks``): float64 sums of integers are exact (below 2**53, some 10**11 pixels), so
    any chunking gives the same numbers."""
    import torch

    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    count = 0
    for chunk in parts:  # float64 a chunk at a time, not the whole set
        x = chunk.to(torch.float64).transpose(0, 1).reshape(3, -1)
        total += x.sum(1)
        squares += (x * x).sum(1)
        count += x.shape[1]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt()
    return (tuple(round(float(v), 4) for v in mean),  # type: ignore[return-value]
            tuple(round(float(v), 4) for v in std))
