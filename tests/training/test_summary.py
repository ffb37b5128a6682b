"""summary.json (``training/summary.py``): complete JSON after every epoch, read while the run
goes on."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import TINY, base_env, read_summary


@pytest.mark.slow
def test_summary_is_valid_json_every_epoch(tmp_path: Path) -> None:
    """Read while the run goes on: after epoch k (once epoch k+1 is logging) summary.json is
    complete JSON for k epochs; at the end for all of them."""
    out = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-m", "ignite_rn50.run", *TINY, "--epochs", "3",
                             "--print-freq", "1", "--output-dir", str(out)], env=base_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        match = re.search(r"Epoch \[(\d)/3\] Iter \[1/", line)
        if match and int(match[1]) > 1:
            seen.append(json.loads((out / "summary.json").read_text()))
    assert proc.wait(timeout=300) == 0
    seen.append(json.loads((out / "summary.json").read_text()))
    assert [s["epochs_completed"] for s in seen] == [1, 2, 3]
    for k, data in enumerate(seen, 1):
        assert len(data["history"]) == k and data["iterations"] == 8 * k
        for key in ("fps", "best_top1", "final_top1", "final_top5", "final_loss",
                    "world_size", "global_batch_size", "device", "amp", "e2e_seconds"):
            assert data[key] is not None, key
    assert read_summary(out)["step_channels_last"] is False
