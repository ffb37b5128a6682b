"""Augmented img/s: the device pipeline (DeviceTrainData) vs torchvision's DataLoader + PIL.

Same images, batch size and CPU cores for both; each measurement is one full epoch from
``iter()`` to the last batch (worker start-up included, as the trainer pays it every epoch),
counting only images actually produced: one value of every batch is read, so each batch
exists in memory. Epochs alternate A B B A ...; last line ``ratio=<device/torchvision>``.
"""

from __future__ import annotations

import os
import time
from typing import Iterable

import torch
from common import interleave, now, parser, setup, synthetic, table

from ignite_rn50.data.pipelines import DeviceTrainData, Feed, LoaderTrainData
from ignite_rn50.system import device as dev


def epoch_rate(data: Iterable, device: torch.device) -> float:
    seen = 0
    probe = torch.zeros((), device=device)
    t0 = now(device)
    for images, labels in data:
        images = images.to(device, non_blocking=True)  # the loader's batches: as the step does
        probe += images[-1, -1, -1, -1]  # touch every batch (on the device: no host sync)
        seen += labels.shape[0]
    seconds = now(device) - t0
    assert probe.isfinite().item() and seen == len(data) * data.batch_size  # type: ignore
    return seen / seconds


def main() -> None:
    # --threads defaults to the CPU count, as the trainer runs; on a machine shared with other
    # jobs prefer --threads 1 (several threads thrash when a neighbour takes a core)
    p = parser(__doc__.splitlines()[0], batch_size=256, image_size=32, train_size=10_000)
    p.add_argument("--num-workers", type=int, default=os.cpu_count() or 1,
                   help="DataLoader worker processes (default: the machine's CPU count)")
    args = p.parse_args()
    device = setup(args)
    images = synthetic(args)
    epoch = [0]
    data = DeviceTrainData(images, device, Feed(args.batch_size, seed=args.seed))

    def device_side() -> float:
        epoch[0] += 1
        data.set_epoch(epoch[0])
        return epoch_rate(data, device)

    loader = LoaderTrainData(images, Feed(args.batch_size, seed=args.seed),
                             num_workers=args.num_workers, pin_memory=dev.pin_memory(device))

    def torchvision_side() -> float:
        epoch[0] += 1
        loader.set_epoch(epoch[0])
        return epoch_rate(loader, device)

    print(f"{len(images)} images {args.image_size}x{args.image_size}, batch {args.batch_size}, "
          f"device pipeline on {device} ({args.threads} threads) vs DataLoader with "
          f"{args.num_workers} workers, {args.repeats} repeats")
    t0 = time.perf_counter()
    results = interleave({"device": device_side, "torchvision": torchvision_side},
                         args.repeats)
    med = table(results)
    print(f"({time.perf_counter() - t0:.1f} s)")
    print(f"ratio={med['device'] / med['torchvision']:.2f}")


if __name__ == "__main__":
    main()
