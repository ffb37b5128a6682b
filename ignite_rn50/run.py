"""Command line entry point: ``python -m ignite_rn50.run [--config FILE] [flags]``.

This module only wires: it parses (before anything heavy is imported), connects the
configuration to the run's ClearML task (whose stored values rule under an agent), checks
once, claims the output folder and launches ``process.train`` in every process. Read
``process.run_training`` next: it is the table of contents of a run.
"""

from __future__ import annotations

import sys

from ignite_rn50 import cli
from ignite_rn50.config.declaration import Config
from ignite_rn50.config.parsing import parse_config

PROG = "ignite_rn50"


def launch(cfg: Config) -> None:
    from ignite_rn50.config import specs
    from ignite_rn50.errors import stopped_on_bad_input
    from ignite_rn50.system import distributed
    from ignite_rn50.training import dashboard, process
    from ignite_rn50.training.runtime import preflight

    with dashboard.connected(cfg) as cfg:  # connect first (ClearML), then check and build
        backend, lock = preflight(cfg)
        try:
            distributed.launch(process.train, cfg, specs.topology(cfg, backend),
                               hold=None if lock is None else lock.fd)
        except BaseException as exc:
            if lock is not None and stopped_on_bad_input(exc):
                lock.leave_as_found()  # bad input stopped it: nothing is left written
            raise
        finally:
            if lock is not None:
                lock.release()


def main(argv: list[str] | None = None) -> int:
    return cli.main(PROG, parse_config, launch, argv)


if __name__ == "__main__":
    sys.exit(main())
