"""The package's best recipe's batch mixing (``data/mixing.py``): mixup/cutmix/label
smoothing arithmetic (mmcls 0.24's, written out by hand here), the draws' frequencies and
determinism, and a resumed mix run."""

from __future__ import annotations

import math
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ignite_rn50.data import mixing
from ignite_rn50.data.mixing import BatchMix, MixSpec
from tests.helpers import TINY, model_state, popen_run, read_summary, run_main, wait_for

CPU = torch.device("cpu")


MIX = ["--mixup-alpha", "1", "--cutmix-alpha", "1", "--label-smoothing", "0.1"]


def _batch(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=gen), torch.randint(0, 5, (n,), generator=gen)


def test_mixup_is_a_convex_blend_of_images_and_one_hot_labels() -> None:
    images, labels = _batch()
    perm = torch.tensor([3, 0, 5, 1, 2, 4])
    targets = mixing.one_hot(labels, 5)
    mixed, soft = mixing.mixup(images, targets, 0.3, perm)
    for i, j in enumerate(perm.tolist()):
        assert torch.allclose(mixed[i], 0.3 * images[i] + 0.7 * images[j])
        expected = torch.zeros(5)
        expected[labels[i]] += 0.3
        expected[labels[j]] += 0.7
        assert torch.allclose(soft[i], expected)
    assert torch.allclose(soft.sum(1), torch.ones(6))


@pytest.mark.parametrize("lam, cy, cx, box, corrected", [
    # cut = int(8 sqrt(1 - lam)); the box spans centre +- cut // 2, clipped to the image
    (0.75, 4, 4, (2, 6, 2, 6), 1 - 16 / 64),   # cut 4: 4 x 4
    (0.5, 0, 7, (0, 2, 5, 8), 1 - 6 / 64),     # cut 5 (odd): +-2, clipped at 0 and 8
    (0.0, 3, 5, (0, 7, 1, 8), 1 - 49 / 64),    # cut 8: +-4 -> [-1, 7) x [1, 9) clipped
    (1.0, 2, 2, (2, 2, 2, 2), 1.0),            # cut 0: an empty box, nothing mixed
])
def test_cutmix_box_and_its_lam_as_mmcls_computes_them(lam: float, cy: int, cx: int,
                                                       box: tuple, corrected: float) -> None:
    got_box, got_lam = mixing.cutmix_box(lam, 8, 8, cy, cx)
    assert got_box == box and got_lam == pytest.approx(corrected)


def test_cutmix_pastes_the_box_of_the_permuted_batch() -> None:
    images, labels = _batch()
    before = images.clone()
    perm = torch.tensor([1, 2, 0, 4, 5, 3])
    box, lam = mixing.cutmix_box(0.7, 8, 8, 3, 4)
    y1, y2, x1, x2 = box
    mixed, soft = mixing.cutmix(images, mixing.one_hot(labels, 5), box, lam, perm)
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[y1:y2, x1:x2] = True
    for i, j in enumerate(perm.tolist()):
        assert torch.equal(mixed[i][:, inside], before[j][:, inside])
        assert torch.equal(mixed[i][:, ~inside], before[i][:, ~inside])
        assert soft[i, labels[i]] >= lam - 1e-6 or labels[i] == labels[j]
    assert 0 < inside.sum() < 64 and torch.allclose(soft.sum(1), torch.ones(6))


def test_label_smoothing_on_soft_targets_is_mmcls_original_mode() -> None:
    """torch's CrossEntropyLoss(label_smoothing=e) on (mixed) probability targets is mmcls's
    LabelSmoothLoss(mode='original'): soft cross-entropy on y (1 - e) + e / C, batch mean."""
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    images, labels = _batch()
    _, soft = mixing.mixup(images, mixing.one_hot(labels, 5), 0.6,
                           torch.tensor([5, 4, 3, 2, 1, 0]))
    for targets in (soft, mixing.one_hot(labels, 5)):
        smooth = targets * 0.9 + 0.1 / 5
        by_hand = -(smooth * torch.log_softmax(logits, 1)).sum(1).mean()
        ours = nn.CrossEntropyLoss(label_smoothing=0.1)(logits, targets)
        assert ours.item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert nn.CrossEntropyLoss(label_smoothing=0.1)(logits, labels).item() == pytest.approx(
        nn.CrossEntropyLoss(label_smoothing=0.1)(logits, mixing.one_hot(labels, 5)).item())


@pytest.mark.parametrize("spec, shares", [
    (MixSpec.resolve(1.0, None, 1.0, None), (0.0, 0.5, 0.5)),   # the recipe: one on each batch
    (MixSpec.resolve(1.0, 0.3, 0.0, None), (0.7, 0.3, 0.0)),    # an identity takes the rest
    (MixSpec.resolve(0.0, None, 1.0, None), (0.0, 0.0, 1.0)),
])
def test_draws_follow_the_probabilities(spec: MixSpec, shares: tuple) -> None:
    n = 20000
    draws = mixing.draw_epoch(spec, seed=5, batches=n, batch_size=4, image_hw=(8, 8))
    counts = np.bincount(draws.kinds, minlength=3)
    for count, share in zip(counts, shares, strict=True):
        assert abs(count / n - share) <= 4 * math.sqrt(share * (1 - share) / n) + 1e-12
    mixed = draws.kinds == mixing.MIXUP
    if mixed.any():  # Beta(1, 1) is uniform: mean 1/2, variance 1/12
        assert draws.lams[mixed].mean() == pytest.approx(0.5, abs=0.02)
        assert draws.lams[mixed].var() == pytest.approx(1 / 12, abs=0.01)
    assert all(sorted(p.tolist()) == [0, 1, 2, 3] for p in draws.perms[:50])


def test_an_epochs_mixing_depends_only_on_seed_rank_epoch_and_batch() -> None:
    spec = MixSpec.resolve(1.0, None, 1.0, None)
    images, labels = _batch(8)

    class State:
        def __init__(self, epoch: int, iteration: int) -> None:
            self.epoch, self.iteration, self.epoch_length = epoch, iteration, 10

    def mixed(mix: BatchMix, epoch: int, iteration: int) -> torch.Tensor:
        return mix(images.clone(), labels, State(epoch, iteration))[0]

    a, b = (BatchMix(spec, 5, CPU, stream=(3, 0), batch_size=8)
            for _ in range(2))
    assert torch.equal(mixed(a, 2, 14), mixed(b, 2, 14))  # b starts mid-epoch (a resume)
    assert torch.equal(mixed(a, 2, 17), mixed(b, 2, 17))
    assert not torch.equal(mixed(a, 3, 24), mixed(b, 2, 14))
    other_rank = BatchMix(spec, 5, CPU, stream=(3, 1), batch_size=8)
    assert not torch.equal(mixed(other_rank, 2, 14), mixed(a, 2, 14))


def test_a_resume_at_the_last_partial_batch_mixes_it_as_an_uninterrupted_run() -> None:
    """--no-drop-last: the epoch's draws do not depend on which batch a run meets first."""
    spec = MixSpec.resolve(1.0, None, 1.0, None)
    images, labels = _batch(8)

    class State:
        def __init__(self, iteration: int) -> None:
            self.epoch, self.iteration, self.epoch_length = 1, iteration, 10

    for seed in range(6):
        uninterrupted, resumed = (BatchMix(spec, 5, CPU, stream=(seed, 0), batch_size=8)
                                  for _ in range(2))
        uninterrupted(images.clone(), labels, State(1))  # the epoch's draws start at batch 1
        last = [mix(images[:5].clone(), labels[:5], State(10))
                for mix in (uninterrupted, resumed)]  # the resume meets the partial batch first
        assert torch.equal(last[0][0], last[1][0]) and torch.equal(last[0][1], last[1][1])


@pytest.mark.slow
def test_a_resumed_mix_run_mixes_the_same_batches(tmp_path: Path) -> None:
    """SIGTERM mid-epoch, then --resume auto: the final weights equal an uninterrupted run's
    (the draws of an epoch depend on seed, rank and epoch alone: nothing to checkpoint)."""
    args = [*TINY, *MIX, "--epochs", "2", "--print-freq", "1"]
    full = tmp_path / "full"
    proc = run_main([*args, "--output-dir", str(full)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training batches mixed: mixup alpha 1 on 50% of batches, cutmix alpha 1 on 50% " \
           "of batches; label smoothing 0.1" in proc.stdout
    out = tmp_path / "stopped"
    stopped = popen_run([*args, "--output-dir", str(out)])
    wait_for(stopped, r"Epoch \[1/2\] Iter \[3/")
    stopped.send_signal(signal.SIGTERM)
    assert stopped.wait(timeout=120) == 0
    assert list(out.glob("interrupted_checkpoint_*.pt"))
    done = run_main([*args, "--output-dir", str(out), "--resume", "auto"])
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = model_state(full / "checkpoint_2.pt"), model_state(out / "checkpoint_2.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_summary(full)["final_top1"] is not None
