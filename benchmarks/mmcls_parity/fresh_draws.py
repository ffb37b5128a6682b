"""Issue 22: one of our device-pipeline runs with fresh draws of the pipeline's own law: its
per-epoch seed is ``SeedSequence([seed, rank, epoch, SALT])`` instead of ``[seed, rank,
epoch]``, so the run keeps the initial weights and the mixing draws of the plain run of that
seed and draws another order, other crops and flips from the same law. Measured (mix
recipe, split 1, the driver's check-6 flags, one thread), seeds 0, 2, 3, 5: best top-1 46.8,
51.0, 53.0, 47.0, where the plain runs had 44.6, 44.2, 45.2, 44.8 (docs/results.md).

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/mmcls_parity/fresh_draws.py \\
        <ignite_rn50.run flags, as driver.train_ours passes them>
"""

from __future__ import annotations

import sys

SALT = 0x5A17

if __name__ == "__main__":
    import numpy as np

    from ignite_rn50.data import pipelines

    def salted(seed: int, rank: int, epoch: int) -> int:
        return int(np.random.SeedSequence([seed, rank, epoch, SALT]).generate_state(1)[0])

    pipelines.epoch_seed = salted  # the device pipeline's draws (mixing has its own stream)
    from ignite_rn50.run import main

    sys.exit(main(sys.argv[1:]))
