"""The device seam with the optional packages present but broken or partial: torch_npu and apex
on disk as real packages (folders on PYTHONPATH), imported through device.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import STANDIN, base_env


def _package(root: Path, name: str, body: str) -> Path:
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text(body)
    return root


def _python(code: str, pythonpath: list[Path]) -> subprocess.CompletedProcess:
    env = base_env()
    env["PYTHONPATH"] = ":".join(str(p) for p in [*pythonpath, Path(env["PYTHONPATH"])])
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("name, call", [("torch_npu", "dev.import_torch_npu()"),
                                        ("apex", "prec._import_apex()")])
def test_ctrl_c_during_an_optional_import_is_not_an_import_error(tmp_path: Path, name: str,
                                                                 call: str) -> None:
    root = _package(tmp_path, name, "raise KeyboardInterrupt\n")
    proc = _python("from ignite_rn50 import device as dev\nfrom ignite_rn50 import precision as "
                   f"prec\ntry:\n    {call}\n"
                   "except KeyboardInterrupt:\n    print('interrupted')\n", [root])
    assert proc.stdout.strip() == "interrupted", proc.stderr[-2000:]


def test_torch_npu_that_exits_is_one_clear_error(tmp_path: Path) -> None:
    """Old torch_npu releases call sys.exit() when CANN is missing."""
    root = _package(tmp_path, "torch_npu", "import sys\nsys.exit('CANN not found')\n")
    proc = _python("from ignite_rn50 import device as dev\nfrom ignite_rn50.errors import "
                   "UserError\ntry:\n    dev.import_torch_npu()\nexcept UserError as e:\n"
                   "    print(e)\n", [root])
    assert "torch_npu is installed but failed to import (SystemExit: CANN not found)" in \
        proc.stdout, proc.stderr[-2000:]


def test_apex_without_npufusedsgd_says_so_on_npu(tmp_path: Path) -> None:
    """--amp-backend auto takes apex where it imports on an NPU (the ModelZoo package's
    setting); an apex without Ascend's NpuFusedSGD falls back to torch's SGD with one warning
    line."""
    if not (STANDIN / "torch_npu" / "__init__.py").is_file():
        pytest.skip("../shared/npu-standin is absent")
    root = _package(tmp_path, "apex", "amp = None  # an apex without Ascend's optimizers\n")
    code = """
import logging, torch
from ignite_rn50.system import device as dev
from ignite_rn50.system import precision as prec
logging.basicConfig(format="%(message)s")
dev.resolve_device_type("npu")
p = prec.resolve_precision("npu", None, "auto", "auto", 1024.0, "O2")
print(p.backend, p.explain())
opt = prec.make_optimizer([torch.nn.Parameter(torch.zeros(2, device="npu:0"))],
                         torch.device("npu:0"), p, prec.Sgd(0.1, 0.9, 0.0, False))
print(type(opt).__name__)
"""
    proc = _python(code, [root, STANDIN])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[:2] == ["apex apex.amp O2, static loss scale 1024", "SGD"]
    warnings = [line for line in proc.stderr.splitlines() if "NpuFusedSGD" in line]
    assert warnings == ["warning: this apex has no NpuFusedSGD (Ascend's apex has it); using "
                        "torch.optim.SGD, which the ModelZoo package did not"]
