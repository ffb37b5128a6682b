"""The ModelZoo scripts' Python side (python -m ignite_rn50.modelzoo): what it resolves from a
trainer command line, even one the trainer will refuse, and the runs it will not report."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from ignite_rn50 import modelzoo
from tests.helpers import REPO


def test_resolve_reads_the_config_and_flags_the_trainer_would() -> None:
    batch, processes, out = modelzoo.resolve(
        ["--config", str(REPO / "configs/resnet50_cifar100_8p_bs2048_mix.yaml"), "--nproc", "8",
         "--world-size", "2"])
    assert (batch, processes) == (2048, 16)
    assert out == Path(os.path.abspath("runs/resnet50_cifar100_8p_bs2048_mix"))


def test_resolve_falls_back_to_the_last_value_of_each_flag_on_a_bad_command_line() -> None:
    # an unknown flag: the trainer will say what is wrong; the script still needs its folder
    args = ["--no-such-flag", "--batch-size", "64", "--nproc=4", "--batch-size", "32",
            "--output-dir", "~/x"]
    assert modelzoo.resolve(args) == (32, 4, Path(os.path.expanduser("~/x")))
    assert modelzoo.resolve(["--no-such-flag", "--batch-size", "lots", "--nproc"])[:2] == \
        (None, None)


def _summary(tmp_path: Path, **values: object) -> tuple[Path, Path]:
    stamp = tmp_path / "stamp"
    stamp.write_text("")
    old = time.time() - 10
    os.utime(stamp, (old, old))
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"epochs": 2, "epochs_completed": 2, "best_top1": 0.5,
                                **values}))
    return path, stamp


@pytest.mark.parametrize("values, needle", [
    ({"epochs_completed": 0}, "completed no epoch"),
    ({"best_top1": None}, "completed no epoch"),
    ({"epochs_completed": 1}, "stopped after 1 of 2 epochs (interrupted; resume it with "
                              "--resume auto)")])
def test_unfinished_runs_get_no_case_log(tmp_path: Path, values: dict, needle: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    summary, stamp = _summary(tmp_path, **values)
    assert modelzoo.main(["report", str(summary), str(stamp), str(tmp_path), "full"]) == 1
    assert needle in capsys.readouterr().err
    assert not list(tmp_path.glob("*.log"))


def test_a_summary_older_than_the_run_is_not_reported(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    summary, stamp = _summary(tmp_path)
    old = time.time() - 100
    os.utime(summary, (old, old))  # left by an earlier run in the same folder
    assert modelzoo.main(["report", str(summary), str(stamp), str(tmp_path), "full"]) == 1
    assert "wrote no summary.json for this run" in capsys.readouterr().err
    assert modelzoo.main(["bogus"]) == 2
