"""The trainer's own events, fired in this order, so that what attaches to them cannot
depend on the order in which it was registered:

- ``ITERATION_LOGGED``: every ``--print-freq`` iterations, once the interval's loss and lr
  are in ``trainer.state.metrics`` (trackers log them here);
- ``EPOCH_EVALUATED``: once an epoch is trained, checked, evaluated and recorded (its row in
  the history, its metrics in ``trainer.state.metrics``): checkpoints save here, trackers
  log the epoch;
- ``EPOCH_SAVED``: after ``EPOCH_EVALUATED``, once the epoch's checkpoints exist:
  summary.json is written here (it names the best checkpoint).
"""

from __future__ import annotations

from ignite.engine import Engine, EventEnum


class RunEvents(EventEnum):
    ITERATION_LOGGED = "iteration_logged"
    EPOCH_EVALUATED = "epoch_evaluated"
    EPOCH_SAVED = "epoch_saved"


def register(trainer: Engine) -> None:
    """With the state attribute each event counts (ignite's loggers need one)."""
    trainer.register_events(*RunEvents, event_to_attr={
        RunEvents.ITERATION_LOGGED: "iteration", RunEvents.EPOCH_EVALUATED: "epoch",
        RunEvents.EPOCH_SAVED: "epoch"})
