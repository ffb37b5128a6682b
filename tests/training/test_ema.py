"""--ema-momentum (``training/ema.py``): the closed form, fp32 averages, and a run's EMA:
scored, checkpointed, resumed exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from torch import nn

from ignite_rn50.training.ema import Ema
from tests.helpers import read_summary


def _train(model: nn.Module, ema: Ema, steps: int) -> list[dict[str, torch.Tensor]]:
    """``steps`` SGD steps on random data with the EMA attached; the weights after each."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    gen = torch.Generator().manual_seed(3)
    seen = [{k: v.detach().clone() for k, v in model.named_parameters()}]

    def step(engine: Engine, batch: torch.Tensor) -> None:
        opt.zero_grad()
        model(batch).square().mean().backward()
        opt.step()
        seen.append({k: v.detach().clone() for k, v in model.named_parameters()})

    engine = Engine(step)
    ema.attach(engine)
    engine.run([torch.randn(4, 3, generator=gen) for _ in range(steps)], max_epochs=1)
    return seen


def test_ema_after_steps_equals_the_closed_form() -> None:
    """ema_T = (1-m)^T w_0 + sum_t m (1-m)^(T-t) w_t (mmcls EMAHook's momentum m)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    m, steps = 0.3, 6
    ema = Ema(model, m)
    seen = _train(model, ema, steps)
    for name, value in ema.ema_model.named_parameters():
        closed = (1 - m) ** steps * seen[0][name] + sum(
            m * (1 - m) ** (steps - t) * seen[t][name] for t in range(1, steps + 1))
        assert torch.allclose(value, closed, atol=1e-6), name
        assert not torch.allclose(value, seen[-1][name], atol=1e-3)  # an average, not a copy


def test_ema_of_half_weights_is_kept_in_fp32() -> None:
    """apex O2's fp16 weights: a momentum of 1e-3 moves an fp32 average, not an fp16 one."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2).half()
    ema = Ema(model, 1e-3)
    assert all(p.dtype == torch.float32 for p in ema.ema_model.parameters())
    start = ema.ema_model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    engine = Engine(lambda e, b: None)
    ema.attach(engine)
    engine.run([0], max_epochs=1)
    assert torch.allclose(ema.ema_model.weight - start, torch.full_like(start, 1e-3), atol=1e-5)


def _state(path: Path, key: str) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)[key]


@pytest.mark.slow
def test_resumed_run_has_the_ema_of_the_uninterrupted_one(ema_runs: tuple[Path, Path]) -> None:
    whole, resumed = ema_runs
    a, b = _state(whole / "checkpoint_2.pt", "ema_model"), _state(resumed / "checkpoint_2.pt",
                                                                   "ema_model")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    raw = _state(whole / "checkpoint_2.pt", "model")
    assert not torch.equal(a["fc.weight"], raw["fc.weight"])


@pytest.mark.slow
def test_ema_is_scored_and_picks_the_best_checkpoint(ema_runs: tuple[Path, Path]) -> None:
    whole, _ = ema_runs
    summary = read_summary(whole)
    assert summary["ema_momentum"] == 0.2 and summary["best_checkpoint_by"] == "val_ema_top1"
    ema_scores = [row["val_ema_top1"] for row in summary["history"]]
    assert len(ema_scores) == 2 and summary["best_ema_top1"] == max(ema_scores)
    best = Path(summary["best_checkpoint"]).name
    assert best.endswith(f"top1={max(ema_scores):.4f}.pt"), (best, ema_scores)
    log = (whole / "train.log").read_text()
    assert "EMA: val loss" in log and "the best checkpoint is chosen by the EMA's top-1" in log
    # clipping's norm reaches the log at the print points only (every 4 steps: 2 lines)
    assert log.count(" grad_norm ") == 2, log
    assert summary["gmacs_per_image"] == pytest.approx(
        json.loads((whole / "summary.json").read_text())["gflops_per_image"] / 2)
