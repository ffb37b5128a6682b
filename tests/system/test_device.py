"""The device seam (``system/device.py``): torch_npu and apex on disk but broken or partial
(real packages on PYTHONPATH), and devices, cards and sizes that are not there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import (
    STANDIN,
    TINY,
    assert_one_line_error,
    base_env,
    model_state,
    run_cli,
    run_main,
)


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


# --- --sync-bn and --deterministic ------------------------------------------------------------

def _sync_bn_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))


def _half_batches() -> torch.Tensor:
    return torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(1)) * 3 + 1


def _sync_bn_rank(rank: int, port: int, out: str) -> None:
    """One of two gloo processes: its half of the batch through the converted model."""
    import torch.distributed as dist

    from ignite_rn50.system import device as dev

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    model = dev.convert_sync_batchnorm(_sync_bn_model(), torch.device("cpu"))
    assert type(model[1]) is dev.HostSyncBatchNorm
    model(_half_batches()[rank * 4:(rank + 1) * 4]).square().mean().backward()
    bn = model[1]
    torch.save({"mean": bn.running_mean, "var": bn.running_var,
                "grads": [p.grad for p in model.parameters()]}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
def test_sync_bn_in_two_gloo_processes_is_bn_over_the_whole_batch(tmp_path: Path) -> None:
    """Both ranks hold the same BN statistics, those of plain BN over both halves together,
    and their gradients add up to that BN's (torch's SyncBatchNorm semantics)."""
    from tests.helpers import free_port

    torch.multiprocessing.spawn(_sync_bn_rank, args=(free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert torch.equal(ranks[0]["mean"], ranks[1]["mean"])
    assert torch.equal(ranks[0]["var"], ranks[1]["var"])
    ref = _sync_bn_model()  # the reference: one BN over all eight images
    x = _half_batches()
    out = ref(x)
    (out[:4].square().mean() + out[4:].square().mean()).backward()
    assert torch.allclose(ranks[0]["mean"], ref[1].running_mean, atol=1e-5)
    assert torch.allclose(ranks[0]["var"], ref[1].running_var, atol=1e-4)
    assert not torch.allclose(ranks[0]["mean"], torch.zeros(4))
    for mine, theirs, want in zip(ranks[0]["grads"], ranks[1]["grads"],
                                  [p.grad for p in ref.parameters()], strict=True):
        assert torch.allclose(mine + theirs, want, atol=1e-5)


def test_sync_bn_with_one_process_is_refused(tmp_path: Path) -> None:
    proc = run_main([*TINY, "--sync-bn", "--output-dir", str(tmp_path / "run")])
    assert_one_line_error(proc, "--sync-bn", "--nproc 2")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_deterministic_runs_twice_give_bit_identical_weights(tmp_path: Path) -> None:
    args = [*TINY, "--synthetic-train-size", "64", "--synthetic-test-size", "32",
            "--batch-size", "16", "--epochs", "1", "--deterministic"]
    try:
        runs = [run_main([*args, "--output-dir", str(tmp_path / name)]) for name in "ab"]
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
    assert all(p.returncode == 0 for p in runs), runs[0].stderr[-2000:]
    a, b = (model_state(tmp_path / name / "checkpoint_1.pt") for name in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = (tmp_path / "a" / "train.log").read_text()
    assert "precision: fp32 (no mixed precision); deterministic algorithms" in log
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["deterministic"] is True
