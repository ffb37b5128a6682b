"""Shared pieces of the benchmarks: flags, device set-up, synthetic data, timing, tables."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from ignite_rn50.data.readers import ImageSet, make_synthetic  # noqa: E402
from ignite_rn50.system import device as dev  # noqa: E402

DEFAULTS = dict(depth=18, batch_size=32, image_size=16, num_classes=100, steps=10, warmup=3,
                repeats=3, train_size=None, threads=None)


def parser(description: str, **overrides: int | None) -> argparse.ArgumentParser:
    """Flags every benchmark shares; the defaults (DEFAULTS, then ``overrides``) are small
    enough for a 2-core CPU. ``repeats=None``: no --repeats flag."""
    d = {**DEFAULTS, **overrides}
    depth, batch_size, image_size, num_classes = (d["depth"], d["batch_size"], d["image_size"],
                                                  d["num_classes"])
    steps, warmup, repeats, train_size, threads = (d["steps"], d["warmup"], d["repeats"],
                                                   d["train_size"], d["threads"])
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, npu, ...")
    p.add_argument("--depth", type=int, default=depth, help="ResNet depth")
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--image-size", type=int, default=image_size)
    p.add_argument("--num-classes", type=int, default=num_classes)
    p.add_argument("--steps", type=int, default=steps, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=warmup, help="untimed steps per measurement")
    if repeats:
        p.add_argument("--repeats", type=int, default=repeats, help="interleaved measurements")
    p.add_argument("--train-size", type=int, default=train_size,
                   help="synthetic images (default: enough for warmup + steps batches)")
    p.add_argument("--threads", type=int, default=threads or os.cpu_count() or 1,
                   help="torch intra-op threads, the same for both sides")
    p.add_argument("--seed", type=int, default=0)
    return p


def setup(args: argparse.Namespace) -> torch.device:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if device.type == "npu":
        dev.import_torch_npu()
    if device.type != "cpu" and device.index is None:
        device = dev.current_device(device.type)
    dev.configure_backends(device, 1)  # one process: leaves our thread count alone
    return device


def synthetic(args: argparse.Namespace, size: int | None = None) -> ImageSet:
    size = size or args.train_size or args.batch_size * (args.warmup + args.steps)
    return make_synthetic(size, args.num_classes, args.image_size, split_seed=args.seed + 1)


class Window:
    """img/s over steps ``warmup+1 .. warmup+steps``, timed between two device-synchronised
    perf_counter marks (no synchronisation in between, so an accelerator's queue stays full)."""

    def __init__(self, device: torch.device, warmup: int, steps: int, batch: int) -> None:
        self.device, self.warmup, self.last, self.batch = device, warmup, warmup + steps, batch
        self.marks: list[float] = []

    def mark(self, step: int) -> None:
        """Call after step ``step`` (1-based)."""
        if step in (self.warmup, self.last):
            self.marks.append(now(self.device))

    def rate(self) -> float:
        assert len(self.marks) == 2, f"Window: {len(self.marks)} marks, expected 2"
        return self.batch * (self.last - self.warmup) / (self.marks[1] - self.marks[0])


def now(device: torch.device) -> float:
    """perf_counter after the device has finished all queued work."""
    dev.synchronize(device)
    return time.perf_counter()


def interleave(measures: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """A B, B A, A B ...: each callable returns img/s; drift on a busy machine hits both alike."""
    results: dict[str, list[float]] = {name: [] for name in measures}
    for r in range(repeats):
        order = list(measures) if r % 2 == 0 else list(reversed(measures))
        for name in order:
            results[name].append(measures[name]())
            print(f"  repeat {r + 1}/{repeats} {name:<12} {results[name][-1]:10.1f} img/s",
                  flush=True)
    return results


def table(rows: dict[str, Sequence[float]]) -> dict[str, float]:
    """Print median/min/max img/s per row; return the medians."""
    print(f"{'':<14}{'median img/s':>14}{'min':>10}{'max':>10}")
    medians = {}
    for name, values in rows.items():
        medians[name] = statistics.median(values)
        print(f"{name:<14}{medians[name]:>14.1f}{min(values):>10.1f}{max(values):>10.1f}")
    return medians
