"""The trainer's Engine + per-step handlers vs a plain PyTorch loop, everything else equal.

Both sides start from the same weights (deepcopy), use the same optimizer, precision, batches
(one DeviceTrainData, same epoch) and step count; the first ``--warmup`` steps are excluded.
``--timing window`` times whole measurements between two device-synchronised points and
alternates them A B B A ...; ``--timing step`` alternates single steps (the Engine is
interrupted after each iteration and resumed) and compares median synchronised step times,
which cancels the bursts of load of a shared CPU. ``auto``: step on cpu, window elsewhere.
Last line: ``ratio=<trainer/plain>``, the median of the ratios of adjacent (paired)
measurements, which cancels drift better than the ratio of the two medians (printed too).
"""

from __future__ import annotations

import copy
import statistics
from typing import Iterator

import torch
from common import Window, interleave, now, parser, setup, synthetic, table
from ignite.engine import Engine, Events
from torch import nn

from ignite_rn50.data.pipelines import DeviceTrainData, Feed
from ignite_rn50.model.resnet import build_model
from ignite_rn50.optim.schedule import LrSchedule, ScheduleSpec
from ignite_rn50.system import precision as prec
from ignite_rn50.system.signals import GracefulStop
from ignite_rn50.training import handlers
from ignite_rn50.training.step import create_trainer, make_train_step

OPT = prec.Sgd(0.1, 0.9, 5e-4, False)


class Bench:
    def __init__(self, args, device: torch.device) -> None:
        self.args, self.device = args, device
        amp = {"auto": None, "on": True, "off": False}[args.amp]
        self.precision = prec.resolve_precision(device.type, amp, "auto", "native")
        self.init = build_model(args.depth, args.num_classes).to(device)
        self.total = args.warmup + args.steps
        self.data = DeviceTrainData(synthetic(args), device,
                                    Feed(args.batch_size, seed=args.seed, max_batches=self.total))
        self.criterion = nn.CrossEntropyLoss().to(device)
        self.models: dict[str, nn.Module] = {}

    def fresh(self, side: str) -> tuple[nn.Module, torch.optim.Optimizer,
                                        torch.amp.GradScaler | None]:
        model = self.models[side] = copy.deepcopy(self.init)
        opt = prec.make_optimizer(model.parameters(), self.device, self.precision, OPT)
        return model, opt, prec.make_grad_scaler(self.device, self.precision)

    def trainer(self, before: list) -> Engine:
        """The trainer with its per-step handlers (those of handlers.attach_all); ``before``
        handlers (event, fn) go ahead of them."""
        model, opt, scaler = self.fresh("trainer")
        engine = create_trainer(make_train_step(model, opt, self.criterion,
                                                prec.Amp(self.device, self.precision, scaler)))
        for event, fn in before:
            engine.add_event_handler(event, fn)
        a = self.args
        handlers.FpsMeter(self.device).attach(engine)
        LrSchedule(opt, ScheduleSpec(0.1, milestones=(60, 120, 160))).attach(engine)
        printed = lambda e, loss: e.state.metrics.update(loss=loss)  # noqa: E731
        handlers.LossTracker(self.device, a.print_freq, printed).attach(engine)
        GracefulStop().attach(engine, every=a.print_freq)
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.data.set_epoch(1))
        return engine

    def plain(self) -> Iterator[None]:
        """The same step written out by hand; yields after each step."""
        model, opt, scaler = self.fresh("plain")
        device, precision, criterion = self.device, self.precision, self.criterion
        self.data.set_epoch(1)
        for images, targets in self.data:
            model.train()
            with prec.autocast(device, precision):
                loss = criterion(model(images), targets)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                prec.update_scaler(scaler, precision)
            else:
                loss.backward()
                opt.step()
            yield

    # --- window mode: whole measurements, A B B A ...

    def trainer_window(self) -> float:
        engine = self.trainer([])
        window = self.window()  # registered last: its marks follow every per-step handler
        engine.add_event_handler(Events.ITERATION_COMPLETED,
                                 lambda e: window.mark(e.state.iteration))
        engine.run(self.data, max_epochs=1)
        return window.rate()

    def plain_window(self) -> float:
        window = self.window()
        for i, _ in enumerate(self.plain(), 1):
            window.mark(i)
        return window.rate()

    def window(self) -> Window:
        return Window(self.device, self.args.warmup, self.args.steps, self.args.batch_size)

    # --- step mode: single steps, T P T P ...

    def alternate_steps(self) -> dict[str, list[float]]:
        """Seconds per step after warm-up. A trainer step runs from its first GET_BATCH_STARTED
        handler to its last ITERATION_COMPLETED one: all of its data fetch and handlers."""
        marks: list[float] = []
        mark = lambda _: marks.append(now(self.device))  # noqa: E731
        engine = self.trainer([(Events.GET_BATCH_STARTED, mark)])
        engine.add_event_handler(Events.ITERATION_COMPLETED, mark)
        engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: e.interrupt())
        plain = self.plain()
        out: dict[str, list[float]] = {"trainer": [], "plain": []}
        for step in range(1, self.total + 1):
            marks.clear()
            engine.run(self.data, max_epochs=1)
            t0 = now(self.device)
            next(plain)
            t1 = now(self.device)
            if step > self.args.warmup:
                out["trainer"].append(marks[1] - marks[0])
                out["plain"].append(t1 - t0)
        engine.run(self.data, max_epochs=1)  # let the epoch complete, untimed
        return out

    def weight_gap(self) -> float:
        a, b = (dict(self.models[k].named_parameters()) for k in ("trainer", "plain"))
        return max((a[n] - b[n]).abs().max().item() for n in a)


def main() -> None:
    p = parser(__doc__.splitlines()[0], image_size=8, steps=10, warmup=3, threads=1)
    p.add_argument("--timing", choices=["auto", "window", "step"], default="auto")
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                   help="auto: the trainer's default (fp16 + GradScaler on GPU, fp32 on CPU)")
    p.add_argument("--print-freq", type=int, default=50, help="LossTracker's host sync period")
    args = p.parse_args()
    device = setup(args)
    b = Bench(args, device)
    timing = args.timing if args.timing != "auto" else "step" if device.type == "cpu" else "window"
    print(f"ResNet-{args.depth} {args.image_size}x{args.image_size} bs{args.batch_size} on "
          f"{device} ({args.threads} threads), {b.precision.describe()}, {args.warmup} warm-up "
          f"+ {args.steps} timed steps, {args.repeats} repeats, {timing} timing")
    if timing == "window":
        results = interleave({"trainer": b.trainer_window, "plain": b.plain_window},
                             args.repeats)
        pairs = [t / p for t, p in zip(results["trainer"], results["plain"], strict=True)]
    else:
        results, pairs = {"trainer": [], "plain": []}, []
        for _ in range(args.repeats):
            seconds = b.alternate_steps()
            for side, values in seconds.items():
                results[side] += [args.batch_size / s for s in values]
            pairs += [p / t for t, p in zip(seconds["trainer"], seconds["plain"], strict=True)]
    med = table(results)
    extra_ms = args.batch_size * (1 / med["trainer"] - 1 / med["plain"]) * 1e3
    print(f"ratio of the medians: {med['trainer'] / med['plain']:.4f} "
          f"(trainer {extra_ms:+.3f} ms per step)")
    print(f"final weights, trainer vs plain: max |diff| = {b.weight_gap():.3g}")
    print(f"median of {len(pairs)} paired (adjacent) trainer/plain ratios:")
    print(f"ratio={statistics.median(pairs):.4f}")


if __name__ == "__main__":
    main()
