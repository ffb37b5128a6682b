"""A spawned-rank entry for tests: the trainer's own per-process function, followed by a
record, at interpreter exit, of the threads the rank still has. Process-group threads that
live on into interpreter shutdown are what aborted ranks at random
(tests/system/test_distributed.py).

    python -m tests.rank_probe PROBE_DIR [trainer flags]
"""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path

from ignite_rn50.config import specs
from ignite_rn50.config.parsing import parse_config
from ignite_rn50.system import distributed
from ignite_rn50.training import process
from ignite_rn50.training.runtime import preflight


def _record_threads(path: Path) -> None:
    names = []
    for task in sorted(os.listdir("/proc/self/task")):
        try:
            names.append(Path(f"/proc/self/task/{task}/comm").read_text().strip())
        except OSError:  # a thread that ended meanwhile
            pass
    path.write_text("\n".join(names) + "\n")


def train_and_record(local_rank: int, job: tuple) -> None:
    cfg, probe_dir = job
    atexit.register(_record_threads, Path(probe_dir) / f"rank{local_rank}.txt")
    process.train(local_rank, cfg)


def main(argv: list[str]) -> int:
    probe_dir, cfg = argv[0], parse_config(argv[1:])
    backend, _lock = preflight(cfg)
    distributed.launch(train_and_record, (cfg, probe_dir),
                       specs.topology(cfg, backend))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
