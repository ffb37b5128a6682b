"""The run's data (``training/dataflow.py``): ``--flip`` / ``--no-flip`` is the run's word over
the dataset spec's on horizontal flips (a folder of digits or text must not be mirrored);
that a training split with ``flip`` off is never mirrored, in both pipelines, is
``tests/data/test_pipelines.py``'s."""

from __future__ import annotations

import pytest
import torch

from ignite_rn50.config.parsing import parse_config
from ignite_rn50.training.dataflow import read_splits

SMALL = ["--device", "cpu", "--dataset", "synthetic", "--synthetic-train-size", "64",
         "--synthetic-test-size", "16", "--synthetic-classes", "4", "--synthetic-image-size",
         "8", "--data-pipeline", "device", "--num-workers", "0"]


@pytest.mark.parametrize("flags, flips", [([], True), (["--no-flip"], False),
                                          (["--flip"], True)])
def test_no_flip_is_the_runs_word_over_the_datasets(flags: list[str], flips: bool) -> None:
    cfg = parse_config([*SMALL, *flags])
    assert cfg.flip == {(): None, ("--no-flip",): False, ("--flip",): True}[tuple(flags)]
    train, test, on_device = read_splits(cfg, torch.device("cpu"), 1)
    assert train.flip is flips and on_device


def test_flip_forces_them_on_where_the_spec_forbids_them(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    from ignite_rn50.data.synthetic import Synthetic

    monkeypatch.setattr(Synthetic, "flip", False)  # as a spec of digits would say
    cfg = parse_config(SMALL)
    assert read_splits(cfg, torch.device("cpu"), 1)[0].flip is False
    assert read_splits(parse_config([*SMALL, "--flip"]), torch.device("cpu"), 1)[0].flip
