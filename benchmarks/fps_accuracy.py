"""Does FpsMeter report the rate it claims? Its img/s vs images counted over wall time.

A trainer Engine (make_train_step + create_trainer, as run.py builds it) runs a few epochs
with FpsMeter and LossTracker attached and an evaluation at each epoch end. Handlers
registered after FpsMeter's time the same steady-state window from outside: they open it
after the documented warm-up (``min(warmup, epoch_length // 2)`` iterations), close it at
the epoch's end, both after a device synchronisation, and count the images of the batches
that actually went through the step. Last line ``ratio=<reported/measured>`` over all
windows; expected within 0.97-1.03.
"""

from __future__ import annotations

import torch
from common import now, parser, setup, synthetic
from ignite.engine import Engine, Events
from torch import nn

from ignite_rn50.data.pipelines import DeviceTrainData, Feed, device_eval_batches
from ignite_rn50.model.resnet import build_model
from ignite_rn50.system import precision as prec
from ignite_rn50.training import handlers
from ignite_rn50.training.step import create_evaluator, create_trainer, make_train_step


class OutsideClock:
    """The window, timed independently of FpsMeter's own bookkeeping."""

    def __init__(self, device: torch.device, warmup: int) -> None:
        self.device, self.warmup = device, warmup
        self.rows: list[tuple[float, float]] = []  # (images, seconds) per epoch
        self.t0: float | None = None
        self.images = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _opens_after(self, engine: Engine) -> int:
        return min(self.warmup, engine.state.epoch_length // 2)

    def _epoch_started(self, engine: Engine) -> None:
        self.t0, self.images = None, 0
        if self._opens_after(engine) == 0:
            self.t0 = now(self.device)

    def _iteration(self, engine: Engine) -> None:
        if self.t0 is not None:
            self.images += int(engine.state.batch[1].shape[0])
        elif engine.state.iteration % engine.state.epoch_length == self._opens_after(engine):
            self.t0 = now(self.device)

    def _epoch_completed(self, engine: Engine) -> None:
        assert self.t0 is not None
        self.rows.append((self.images, now(self.device) - self.t0))


def main() -> None:
    p = parser(__doc__.splitlines()[0], image_size=8, steps=12, warmup=5, threads=1,
               repeats=None)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--eval-size", type=int, default=256, help="test images per evaluation")
    args = p.parse_args()  # --steps: iterations per epoch; --warmup: FpsMeter's warm-up
    device = setup(args)
    precision = prec.resolve_precision(device.type, None, "auto", "native")
    model = build_model(args.depth, args.num_classes).to(device)
    opt = prec.make_optimizer(model.parameters(), device, precision,
                              prec.Sgd(0.1, 0.9, 5e-4, False))
    scaler = prec.make_grad_scaler(device, precision)
    criterion = nn.CrossEntropyLoss().to(device)
    train = DeviceTrainData(synthetic(args, args.batch_size * args.steps), device,
                            Feed(args.batch_size, seed=args.seed))
    test = device_eval_batches(synthetic(args, args.eval_size), device, args.batch_size,
                               rank=0, world_size=1)
    trainer = create_trainer(make_train_step(model, opt, criterion,
                                             prec.Amp(device, precision, scaler)))
    evaluator = create_evaluator(model, criterion, device, precision,
                                 num_classes=args.num_classes)
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: train.set_epoch(e.state.epoch))
    meter = handlers.FpsMeter(device, warmup=args.warmup)
    meter.attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, meter.epoch_completed)  # as EpochEnd does
    handlers.LossTracker(device, 50, lambda e, loss: None).attach(trainer)
    outside = OutsideClock(device, args.warmup)
    outside.attach(trainer)  # after FpsMeter: its marks follow the meter's
    reported: list[tuple[float | None, float | None]] = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED,
                              lambda _: reported.append((meter.epoch_fps, meter.epoch_data_wait)))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run(test))
    trainer.run(train, max_epochs=args.epochs)

    print(f"ResNet-{args.depth} {args.image_size}x{args.image_size} bs{args.batch_size} on "
          f"{device} ({args.threads} threads), {precision.describe()}, {args.epochs} epochs of "
          f"{args.steps} iterations, FpsMeter warm-up {args.warmup}")
    print(f"{'epoch':<7}{'reported img/s':>16}{'measured img/s':>16}{'ratio':>8}{'data wait':>11}")
    rows = zip(reported, outside.rows, strict=True)
    for epoch, ((fps, wait), (images, seconds)) in enumerate(rows, 1):
        measured = images / seconds
        print(f"{epoch:<7}{fps or 0:>16.1f}{measured:>16.1f}{(fps or 0) / measured:>8.4f}"
              f"{100 * (wait or 0):>10.1f}%")
    images, seconds = (sum(col) for col in zip(*outside.rows, strict=True))
    print(f"{'all':<7}{meter.fps or 0:>16.1f}{images / seconds:>16.1f}")
    print(f"ratio={(meter.fps or 0) / (images / seconds):.4f}")


if __name__ == "__main__":
    main()
