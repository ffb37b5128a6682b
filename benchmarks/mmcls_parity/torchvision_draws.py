"""Issue 22: one of our training runs, device pipeline, drawing its order, crops and flips as
the torchvision pipeline does (``--data-pipeline torchvision`` with ``--num-workers 0``).
If the two pipelines differ only in their draws, this run repeats the torchvision run of the
same flags and seed figure for figure. Measured (mix recipe, seed 4, split 1, the driver's
check-6 flags): top-1 per epoch 14.2, 21.8, 11.8, 27.4, 35.6, 36.0, 37.6, 50.8, 50.0, 52.0
in both, against 47.8 best for the device pipeline's own draws.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/mmcls_parity/torchvision_draws.py \\
        <ignite_rn50.run flags, as driver.train_ours passes them>
"""

from __future__ import annotations

import sys

import torch

from ignite_rn50.data import pipelines


def torchvision_draws(self: pipelines.DeviceTrainData
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DistributedSampler's order (seed + epoch), then per image in that order RandomCrop's
    two ``torch.randint`` and RandomHorizontalFlip's ``torch.rand`` on the global generator,
    seeded as LoaderTrainData.set_epoch seeds it (tests/data/test_pipelines.py does the same)."""
    n = len(self.labels)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
    kept = torch.get_rng_state()
    torch.manual_seed(pipelines.epoch_seed(self.seed, self.rank, self.epoch))
    span = 2 * pipelines.pad_for(self.images.shape[-1]) + 1
    offsets, flips = torch.zeros(n, 2, dtype=torch.long), torch.zeros(n, dtype=torch.bool)
    for i in order.tolist():
        offsets[i, 0] = torch.randint(0, span, (1,)).item()
        offsets[i, 1] = torch.randint(0, span, (1,)).item()
        flips[i] = bool(torch.rand(1) < 0.5)
    torch.set_rng_state(kept)
    return order, offsets, flips


if __name__ == "__main__":
    pipelines.DeviceTrainData.epoch_draws = torchvision_draws
    from ignite_rn50.run import main

    sys.exit(main(sys.argv[1:]))
