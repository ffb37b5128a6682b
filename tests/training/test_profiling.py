"""--profile-steps (``training/profiling.py``): a trace in <output-dir>/profile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import TINY, assert_one_line_error, run_main


@pytest.mark.slow
def test_profile_folder_holds_a_readable_trace(ema_runs: tuple[Path, Path]) -> None:
    """The EMA runs profile iterations 2..3: a Chrome/Perfetto trace of aten ops."""
    whole, _ = ema_runs
    traces = list((whole / "profile").glob("*.pt.trace.json"))
    assert len(traces) == 1, list((whole / "profile").iterdir())
    events = json.loads(traces[0].read_text())["traceEvents"]
    names = {e.get("name", "") for e in events}
    assert any(n.startswith("aten::convolution") for n in names)
    assert "profile written: " in (whole / "train.log").read_text()


@pytest.mark.parametrize("steps", ["3:2", "0:2", "x", "5"])
def test_bad_profile_steps_is_one_line(steps: str, tmp_path: Path) -> None:
    proc = run_main([*TINY, "--output-dir", str(tmp_path / "run"), "--profile-steps", steps])
    assert_one_line_error(proc, "--profile-steps")
    assert not (tmp_path / "run").exists()
