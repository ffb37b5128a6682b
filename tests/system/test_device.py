"""The device seam (``system/device.py``): torch_npu and apex on disk but broken or partial
(real packages on PYTHONPATH), and devices, cards and sizes that are not there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import STANDIN, TINY, assert_one_line_error, base_env, run_cli, run_main


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
    proc = _python("from ignite_rn50.system import device as dev\n"
                   "from ignite_rn50.system import precision as prec\n"
                   f"try:\n    {call}\n"
                   "except KeyboardInterrupt:\n    print('interrupted')\n", [root])
    assert proc.stdout.strip() == "interrupted", proc.stderr[-2000:]


def test_torch_npu_that_exits_is_one_clear_error(tmp_path: Path) -> None:
    """Old torch_npu releases call sys.exit() when CANN is missing."""
    root = _package(tmp_path, "torch_npu", "import sys\nsys.exit('CANN not found')\n")
    proc = _python("from ignite_rn50.system import device as dev\nfrom ignite_rn50.errors import "
                   "UserError\ntry:\n    dev.import_torch_npu()\nexcept UserError as e:\n"
                   "    print(e)\n", [root])
    assert "torch_npu is installed but failed to import (SystemExit: CANN not found)" in \
        proc.stdout, proc.stderr[-2000:]


@pytest.mark.slow
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


@pytest.mark.parametrize("args, needle", [
    (["--device", "npu"], "needs torch_npu"),
    (["--device", "cuda"], "no CUDA GPU"),
    (["--amp-backend", "apex"], "needs --device npu or cuda"),
    (["--data-pipeline", "device", "--batch-size", "512"], "fewer than the per-process batch"),
])
def test_devices_and_sizes_absent(tmp_path: Path, args: list[str], needle: str) -> None:
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    if "npu" in args:  # a real process: nothing of torch_npu may come into this one
        proc = run_cli([*TINY, *args, "--output-dir", str(tmp_path / "o")])
    else:
        proc = run_main([*TINY, *args, "--output-dir", str(tmp_path / "o")])
    assert_one_line_error(proc, needle)


@pytest.mark.slow
def test_npu_card_out_of_range_and_apex_missing(tmp_path: Path,
                                                standin_env: dict[str, str]) -> None:
    assert_one_line_error(run_cli([*TINY, "--device", "npu", "--gpu-id", "5", "--output-dir",
                                   str(tmp_path / "o")], env=standin_env), "--gpu-id 5 is out")
    assert_one_line_error(run_cli([*TINY, "--device", "npu", "--amp-backend", "apex",
                                   "--output-dir", str(tmp_path / "o")], env=standin_env),
                          "needs apex")
