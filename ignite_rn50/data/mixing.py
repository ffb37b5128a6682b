"""Batch mixing (mixup, cutmix) with mmcls 0.24's arithmetic, on the training device.

mmcls's ``train_cfg.augments`` picks, for every batch, one augment by its probability (an
identity takes what the probabilities leave; 0.5 + 0.5 means one of the two on every batch),
then:

- mixup: ``lam ~ Beta(a, a)``, a random permutation ``p`` of the batch,
  ``x = lam x + (1 - lam) x[p]``, ``y = lam y + (1 - lam) y[p]`` on one-hot labels;
- cutmix: ``lam ~ Beta(a, a)``, ``p``; a box of side ``int(H sqrt(1 - lam))`` (and W) around a
  uniform centre (row first, upper bound exclusive), ``+-side // 2``, clipped to the image;
  the box of ``x`` takes ``x[p]``'s pixels, and ``lam`` becomes ``1 - box area / (H W)``
  before the labels mix as for mixup.

Label smoothing is the loss's (``nn.CrossEntropyLoss(label_smoothing=...)``: mmcls's
LabelSmoothLoss 'original', ``y (1 - e) + e / C``, soft targets included).

Ours, not timm's Mixup: that one draws with Python's and numpy's global generators per call
and mixes on the host side of the loader. Here every random number of an epoch is drawn at
its start from a generator seeded by (seed, rank, epoch), like the input pipeline's: a
resumed run mixes exactly the batches an uninterrupted one would (there is no random state
to checkpoint), the permutations reach the device in one copy per epoch, and no step reads
anything back from the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

IDENTITY, MIXUP, CUTMIX = 0, 1, 2


@dataclass(frozen=True)
class MixSpec:
    mixup_alpha: float = 0.0
    mixup_prob: float = 0.0
    cutmix_alpha: float = 0.0
    cutmix_prob: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.mixup_prob > 0 or self.cutmix_prob > 0

    @classmethod
    def resolve(cls, mixup_alpha: float, mixup_prob: float | None, cutmix_alpha: float,
                cutmix_prob: float | None) -> MixSpec:
        """Unset probabilities take the batches the others leave: all of them for the only
        mix that is on, half each when both are (mmcls's recipe), 1 - p beside a set p."""
        probs = [mixup_prob, cutmix_prob]
        on = [mixup_alpha > 0, cutmix_alpha > 0]
        unset = [i for i in (0, 1) if probs[i] is None and on[i]]
        left = 1.0 - sum(p for p in probs if p is not None)
        for i in (0, 1):
            if probs[i] is None:
                probs[i] = left / len(unset) if on[i] else 0.0
        return cls(mixup_alpha, float(probs[0]), cutmix_alpha, float(probs[1]))

    def describe(self) -> str:
        parts = [f"{name} alpha {alpha:g} on {100 * prob:g}% of batches"
                 for name, alpha, prob in (("mixup", self.mixup_alpha, self.mixup_prob),
                                           ("cutmix", self.cutmix_alpha, self.cutmix_prob))
                 if prob > 0]
        return ", ".join(parts) or "none"


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """float32 one-hot by a scatter: F.one_hot checks the labels' range on the host (a
    device sync per call)."""
    out = torch.zeros(labels.shape[0], num_classes, device=labels.device)
    return out.scatter_(1, labels[:, None], 1.0)


def mixup(images: torch.Tensor, targets: torch.Tensor, lam: float,
          perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``targets``: one-hot (or already soft) [B, C]."""
    return (lam * images + (1 - lam) * images[perm],
            lam * targets + (1 - lam) * targets[perm])


def cutmix_box(lam: float, height: int, width: int, cy: int, cx: int
               ) -> tuple[tuple[int, int, int, int], float]:
    """((y1, y2, x1, x2), the lam of the box's real area) for a centre (cy, cx)."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    y1, y2 = min(max(cy - cut_h // 2, 0), height), min(max(cy + cut_h // 2, 0), height)
    x1, x2 = min(max(cx - cut_w // 2, 0), width), min(max(cx + cut_w // 2, 0), width)
    return (y1, y2, x1, x2), 1.0 - (y2 - y1) * (x2 - x1) / float(height * width)


def cutmix(images: torch.Tensor, targets: torch.Tensor, box: tuple[int, int, int, int],
           lam: float, perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``lam``: the box's (see ``cutmix_box``). ``images`` is changed in place."""
    y1, y2, x1, x2 = box
    images[:, :, y1:y2, x1:x2] = images[perm][:, :, y1:y2, x1:x2]
    return images, lam * targets + (1 - lam) * targets[perm]


@dataclass
class EpochDraws:
    """Every random number one epoch's mixing uses, per batch."""

    kinds: np.ndarray  # IDENTITY / MIXUP / CUTMIX
    lams: np.ndarray  # what the labels mix with (cutmix: the box's real share)
    boxes: np.ndarray  # [n, 4] y1, y2, x1, x2 (cutmix batches)
    perms: torch.Tensor  # [n, B]


def draw_epoch(spec: MixSpec, seed: int, batches: int, batch_size: int,
               image_hw: tuple[int, int]) -> EpochDraws:
    """The draws of one epoch from ``seed``, on the host: per batch the augment, lam and box,
    and the permutations (CPU tensors)."""
    rng = np.random.default_rng(seed)
    probs = np.asarray([max(0.0, 1.0 - spec.mixup_prob - spec.cutmix_prob), spec.mixup_prob,
                        spec.cutmix_prob])
    kinds = rng.choice(3, size=batches, p=probs / probs.sum())
    lams = np.ones(batches)
    for kind, alpha in ((MIXUP, spec.mixup_alpha), (CUTMIX, spec.cutmix_alpha)):
        chosen = kinds == kind
        if chosen.any():
            lams[chosen] = rng.beta(alpha, alpha, size=int(chosen.sum()))
    height, width = image_hw
    boxes = np.zeros((batches, 4), dtype=np.int64)
    for b in np.flatnonzero(kinds == CUTMIX):
        cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
        box, lams[b] = cutmix_box(float(lams[b]), height, width, cy, cx)
        boxes[b] = box
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    perms = torch.stack([torch.randperm(batch_size, generator=gen) for _ in range(batches)])
    return EpochDraws(kinds, lams, boxes, perms)


class BatchMix:
    """Mixes one rank's training batches: the ``i``-th batch of epoch ``e`` always the same
    way, drawn from (seed, rank, e) at the epoch's first batch. Permutations are drawn at the
    full per-process ``batch_size`` (never at the size of the batch that happens to come
    first: after a resume that can be the epoch's last, partial one)."""

    STREAM = 0x6D6978  # keeps these draws apart from the input pipeline's of the same epoch

    def __init__(self, spec: MixSpec, num_classes: int, device: torch.device, *,
                 stream: tuple[int, int], batch_size: int) -> None:
        self.spec, self.num_classes, self.device = spec, num_classes, device
        self.seed, self.rank = stream  # (seed, rank)
        self.batch_size = batch_size
        self.draws: EpochDraws | None = None
        self._epoch = -1

    def draws_for(self, epoch: int, batches: int, images: torch.Tensor) -> EpochDraws:
        if self._epoch != epoch or self.draws is None:
            seed = np.random.SeedSequence([self.seed, self.rank, epoch, self.STREAM])
            draws = draw_epoch(self.spec, int(seed.generate_state(1)[0]), batches,
                               self.batch_size, (images.shape[-2], images.shape[-1]))
            draws.perms = draws.perms.to(self.device, non_blocking=True)
            self.draws, self._epoch = draws, epoch
        return self.draws

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, state: object
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's batch (``state``: the trainer's), mixed; the targets are soft [B, C]
        floats whatever the draw, so a step always sees one target shape."""
        index = (state.iteration - 1) % state.epoch_length  # type: ignore[attr-defined]
        draws = self.draws_for(state.epoch, state.epoch_length, images)  # type: ignore
        targets = one_hot(labels, self.num_classes)
        kind, lam, perm = int(draws.kinds[index]), float(draws.lams[index]), draws.perms[index]
        if images.shape[0] < perm.numel():  # an epoch's last, partial batch (--no-drop-last):
            perm = perm[:images.shape[0]].argsort()  # the ranks of a random subset, on device
        if kind == MIXUP:
            return mixup(images, targets, lam, perm)
        if kind == CUTMIX:
            return cutmix(images, targets, tuple(int(v) for v in draws.boxes[index]), lam, perm)
        return images, targets
