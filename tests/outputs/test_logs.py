"""The run's log (``outputs/logs.py``): it opens with the lines a bug report needs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import TINY, run_cli


@pytest.mark.slow
def test_train_log_opens_with_the_environment(tmp_path: Path) -> None:
    out = tmp_path / "env"
    proc = run_cli([*TINY, "--epochs", "1", "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = [line.split(" ", 1)[1] for line in (out / "train.log").read_text().splitlines()[:4]]
    assert first[0].startswith("command: python") and "-m ignite_rn50.run" in first[0]
    assert "--output-dir " + str(out) in first[0]
    for name in ("python ", "torch ", "torchvision ", "pytorch-ignite ", "clearml "):
        assert name in first[1], first[1]
    assert re.match(r"device: cpu \(.+, \d+ cores\) x 1, backend none \(1 process\)", first[2])
    assert first[3] == "precision: fp32 (no mixed precision)"
