"""Checkpoints: what must match to resume, the files and their retention, and ``--resume``.

Files in ``--output-dir`` (names and retention are ours; ignite's ``DiskSaver`` writes them
atomically, on rank 0):

- ``checkpoint_<epoch>.pt``: the last ``--keep-checkpoints`` epochs;
- ``best_checkpoint_<epoch>_top1=<acc>.pt``: the best epoch by validation top-1 (the new best
  is written before the old one is removed, so one always exists once an epoch is done);
- ``interrupted_checkpoint_<iteration>.pt`` (a signal) or ``iteration_checkpoint_<iteration>
  .pt`` (``--save-every-iters``): one mid-epoch file at most, the newest; the next epoch
  checkpoint replaces it.

All of them hold the same objects and resume the same way; ``--resume auto`` takes the one
furthest into training. Every file loads with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver

from ignite_rn50.errors import OutOfSpace, UserError
from ignite_rn50.events import RunEvents
from ignite_rn50.model.resnet import resolve_stem
from ignite_rn50.model.weights import FACTS_KEY
from ignite_rn50.outputs import rundir
from ignite_rn50.system import distributed
from ignite_rn50.system import precision as prec
from ignite_rn50.training.context import RunContext

log = logging.getLogger("ignite_rn50")

EPOCH_RE = re.compile(r"^checkpoint_(\d+)\.pt$")
BEST_RE = re.compile(r"^best_checkpoint_(\d+)_top1=([0-9.]+)\.pt$")
MID_RE = re.compile(r"^(interrupted|iteration)_checkpoint_(\d+)\.pt$")


@dataclass
class RunIdentity:
    """What a checkpoint must match to be resumed: shown by name in a mismatch error."""

    values: dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.values)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = {"stem": STEM_BEFORE_IT_WAS_RECORDED, **state}  # every older run had it
        mismatched = [f"{k}: checkpoint has {state.get(k)!r}, this run {v!r}"
                      for k, v in self.values.items() if state.get(k) != v]
        if mismatched:
            raise UserError("checkpoint does not match this run (" + "; ".join(mismatched) +
                            "); pass the same options as the run that wrote it, or another "
                            "--output-dir")


@dataclass
class DataFacts:
    """What a checkpoint records of its data and network, so that evaluate, export and
    predict need nothing else (``weights.read_facts`` reads it back): saved, never restored
    (the run's own data says it again)."""

    values: dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.values)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def data_facts(ctx: RunContext) -> DataFacts:
    data, cfg = ctx.data, ctx.cfg
    mean, std = data.stats or (None, None)
    return DataFacts({"dataset": cfg.dataset, "depth": cfg.depth,
                      "num_classes": data.num_classes,
                      "class_names": list(data.class_names) if data.class_names else None,
                      "mean": list(mean) if mean else None, "std": list(std) if std else None,
                      "image_size": data.image_size,
                      "stem": resolve_stem(cfg.stem, data.image_size)})


OPTIONAL = {FACTS_KEY}  # older checkpoints lack them
STEM_BEFORE_IT_WAS_RECORDED = "cifar"


@dataclass
class Saved:
    """The files of each kind in the folder, as (key, name): epoch / score / iteration."""

    epochs: list[tuple[int, str]] = field(default_factory=list)
    best: tuple[float, str] | None = None
    mid: tuple[int, str] | None = None

    @classmethod
    def scan(cls, dirname: Path) -> Saved:
        saved = cls()
        for path in sorted(dirname.iterdir()) if dirname.is_dir() else ():
            if m := EPOCH_RE.match(path.name):
                saved.epochs.append((int(m[1]), path.name))
            elif (m := BEST_RE.match(path.name)) and (saved.best is None or
                                                       float(m[2]) > saved.best[0]):
                saved.best = (float(m[2]), path.name)
            elif (m := MID_RE.match(path.name)) and (saved.mid is None or
                                                      int(m[2]) > saved.mid[0]):
                saved.mid = (int(m[2]), path.name)
        saved.epochs.sort()
        return saved


class Checkpoints:
    """Saves ``to_save`` at each evaluated epoch (and mid-epoch when asked), keeps the files
    of the module docstring, and turns a full disk into one line (``rundir.out_of_space``)."""

    def __init__(self, to_save: dict[str, Any], dirname: Path, keep: int,
                 top1: Callable[[], float]) -> None:
        self.to_save, self.dirname, self.keep, self.top1 = to_save, dirname, keep, top1
        self.saver = DiskSaver(dirname, atomic=True, create_dir=False, require_empty=False)
        self.saved = Saved.scan(dirname)

    def attach(self, trainer: Engine, every_iters: int | None) -> None:
        trainer.add_event_handler(RunEvents.EPOCH_EVALUATED, self.save_epoch)
        if every_iters:
            trainer.add_event_handler(Events.ITERATION_COMPLETED(every=every_iters),
                                      self.save_within_epoch)

    def _write(self, name: str) -> None:
        """Rank 0 writes; with several processes every rank then learns whether the disk was
        full (one small all-reduce per save), so that all of them stop together, with the
        same status, and only rank 0 says why."""
        state = {key: obj.state_dict() for key, obj in self.to_save.items()}
        failure: OutOfSpace | None = None
        try:
            self.saver(state, name)
        except (OSError, RuntimeError) as exc:
            needed = rundir.tensor_bytes(state)
            if not rundir.is_out_of_space(exc, self.dirname, needed):
                raise
            last = self.last_good()
            failure = rundir.out_of_space(self.dirname, name, needed,
                                          f"the last good checkpoint, {last.name}, is intact"
                                          if last else "no checkpoint was written yet")
        if idist.get_world_size() > 1 and distributed.any_rank(failure is not None):
            failure = failure or OutOfSpace(f"rank 0 could not write {name} (disk full)")
            failure.logged = idist.get_rank() != 0
        if failure is not None:
            raise failure

    def _remove(self, name: str) -> None:
        """Rank 0 only, as the writes. A file already gone (removed by hand to free the disk)
        leaves nothing to remove: no reason to stop the run."""
        with contextlib.suppress(FileNotFoundError):
            self.saver.remove(name)

    def last_good(self) -> Path | None:
        """The saved file furthest into training (what --resume auto would take)."""
        return find_latest_checkpoint(self.dirname) if idist.get_rank() == 0 else None

    def save_epoch(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        name = f"checkpoint_{epoch}.pt"
        self._write(name)
        self.saved.epochs = [(e, n) for e, n in self.saved.epochs if e != epoch] + [(epoch, name)]
        while len(self.saved.epochs) > self.keep:
            self._remove(self.saved.epochs.pop(0)[1])
        score = float(self.top1())
        if self.saved.best is None or score > self.saved.best[0]:
            best = f"best_checkpoint_{epoch}_top1={score:.4f}.pt"
            self._write(best)
            if self.saved.best is not None and self.saved.best[1] != best:
                self._remove(self.saved.best[1])
            self.saved.best = (score, best)
        self._drop_mid()

    def save_within_epoch(self, engine: Engine) -> None:
        if engine.state.iteration % engine.state.epoch_length:  # an epoch's end saves anyway
            self.save_mid(engine, "iteration")

    def save_mid(self, engine: Engine, kind: str) -> Path:
        """``kind``: interrupted (a signal) or iteration (--save-every-iters)."""
        name = f"{kind}_checkpoint_{engine.state.iteration}.pt"
        self._write(name)
        previous, self.saved.mid = self.saved.mid, (engine.state.iteration, name)
        if previous is not None and previous[1] != name:
            self._remove(previous[1])
        return self.dirname / name

    def _drop_mid(self) -> None:
        """A completed epoch supersedes any mid-epoch save before it."""
        if self.saved.mid is not None:
            self._remove(self.saved.mid[1])
            self.saved.mid = None

    def forget_after(self, epoch: int, iteration: int) -> None:
        """Resuming from an older checkpoint abandons the saves made after it: they are renamed
        ``*.abandoned`` (kept, but never resumed by auto) and leave the retention."""
        newer = [n for e, n in self.saved.epochs if e > epoch]
        self.saved.epochs = [(e, n) for e, n in self.saved.epochs if e <= epoch]
        if self.saved.best is not None and int(BEST_RE.match(self.saved.best[1])[1]) > epoch:
            newer.append(self.saved.best[1])
            self.saved.best = None
        if self.saved.mid is not None and self.saved.mid[0] > iteration:
            newer.append(self.saved.mid[1])
            self.saved.mid = None
        if idist.get_rank() == 0:
            for name in newer:
                path = self.dirname / name
                if path.exists():
                    path.rename(path.with_name(name + ".abandoned"))
                    log.info("resuming an earlier point: renamed %s to %s.abandoned", name, name)

    @property
    def best_path(self) -> Path | None:
        return self.dirname / self.saved.best[1] if self.saved.best else None

    @property
    def last_path(self) -> Path | None:
        """The newest epoch checkpoint (the dashboard's 'last' model)."""
        return self.dirname / self.saved.epochs[-1][1] if self.saved.epochs else None


def find_latest_checkpoint(dirname: Path) -> Path | None:
    """Newest complete checkpoint by training progress. Atomic saves mean a file with a final
    name is complete; temporary files of a killed save, and names that do not stat or load
    (a dangling symlink), are skipped."""
    best: tuple[int, Path] | None = None
    names = sorted(p.name for p in dirname.glob("*.pt")) if dirname.is_dir() else []
    # on a tie (the best file is also the last epoch's) the epoch checkpoint is named
    candidates = [n for pattern in (EPOCH_RE, MID_RE, BEST_RE) for n in names
                  if pattern.match(n)]
    for path in (dirname / n for n in candidates):
        try:
            if path.stat().st_size == 0:
                continue
        except OSError:  # a dangling symlink, a loop, a file gone since the listing: skipped
            continue
        iteration = read_trainer_iteration(path)
        if iteration is not None and (best is None or iteration > best[0]):
            best = (iteration, path)
    return best[1] if best else None


def read_trainer_iteration(path: Path) -> int | None:
    """The trainer's iteration, read without loading the tensors (memory-mapped)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(state["trainer"]["iteration"])
    except Exception:  # noqa: BLE001 - an unreadable candidate is simply not a candidate
        return None


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"--resume {path}: no such file; pass an existing checkpoint or "
                        "--resume auto") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise UserError(f"--resume {path} is not a loadable checkpoint ({type(exc).__name__}); "
                        "pass another file or --resume auto") from None


def restore(to_load: dict[str, Any], state: dict[str, Any], path: Path) -> None:
    to_load = {k: v for k, v in to_load.items() if k in state or k not in OPTIONAL}
    missing = [k for k in to_load if k not in state]
    if missing:
        raise UserError(f"--resume {path} lacks {', '.join(missing)}: it was not written by "
                        "this trainer with these options (amp, apex, --ema-momentum); pass "
                        "another checkpoint")
    if "identity" in to_load:
        to_load["identity"].load_state_dict(state["identity"])
    try:
        Checkpoint.load_objects({k: v for k, v in to_load.items() if k != "identity"}, state)
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise UserError(f"--resume {path} does not fit this model/optimizer ({first}); pass the "
                        "options of the run that wrote it") from None


def setup_checkpoints(ctx: RunContext) -> Checkpoints:
    """One ``to_save`` dict serves saving and resuming; ``identity`` names what a checkpoint
    must match to be resumed."""
    parts = ctx.parts
    facts = data_facts(ctx)
    identity = RunIdentity({"depth": ctx.cfg.depth, "num_classes": ctx.data.num_classes,
                            "optimizer": type(parts.optimizer).__name__,
                            "amp": parts.precision.describe(), "stem": facts.values["stem"]})
    to_save: dict[str, Any] = {"model": parts.model, "optimizer": parts.optimizer,
                               "lr_scheduler": parts.schedule, "trainer": ctx.trainer,
                               "record": ctx.record, "identity": identity, FACTS_KEY: facts}
    if parts.scaler is not None:
        to_save["scaler"] = parts.scaler
    if parts.precision.backend == "apex":
        to_save["amp"] = prec.apex_state()
    if parts.ema is not None:  # evaluate/export/predict take it (--weights ema)
        to_save["ema_model"] = parts.ema.ema_model
    evaluator = ctx.ema_evaluator or ctx.evaluator  # with EMA, the best is the EMA's
    return Checkpoints(to_save, ctx.rt.out, ctx.cfg.keep_checkpoints,
                       top1=lambda: evaluator.state.metrics["top1"])


def resume(ctx: RunContext, checkpoints: Checkpoints) -> Path | None:
    """--resume: restore every saved object from the given checkpoint, or with ``auto`` the
    newest complete one in the folder. Returns the file, or None when starting fresh."""
    spec, trainer = ctx.cfg.resume, ctx.trainer
    if spec is None:
        return None
    out = checkpoints.dirname
    path = find_latest_checkpoint(out) if spec == "auto" else Path(spec)
    if path is None:
        log.info("--resume auto: no checkpoint in %s yet, starting from scratch", out)
        return None
    restore(checkpoints.to_save, load_checkpoint(path), path)
    epoch_length = len(ctx.data.train)
    if trainer.state.epoch_length != epoch_length:
        raise UserError(f"--resume {path} was written with {trainer.state.epoch_length} "
                        f"iterations per epoch, this run has {epoch_length} (batch size, "
                        "processes, --max-iters or data differ); resume with the options of "
                        "that run")
    checkpoints.forget_after(trainer.state.epoch, trainer.state.iteration)
    log.info("resumed from %s (epoch %d, iteration %d)", path, trainer.state.epoch,
             trainer.state.iteration)
    return path
