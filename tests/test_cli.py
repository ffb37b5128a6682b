"""The one runner of the entry points (``cli.py``): parse first, import the heavy machinery
after."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import base_env


def test_help_and_a_mistyped_flag_answer_without_torch() -> None:
    """--help and a wrong flag parse before anything heavy is imported: torch, ignite and
    numpy never load (importing them is seconds on a loaded machine)."""
    code = ("import sys; from ignite_rn50 import run, evaluate, predict; import contextlib, io\n"
            "for main, argv in ((run.main, ['--help']), (run.main, ['--epoch', '3']),\n"
            "                   (evaluate.main, ['--help']), (predict.main, ['--help'])):\n"
            "    with contextlib.redirect_stdout(io.StringIO()), "
            "contextlib.redirect_stderr(io.StringIO()):\n"
            "        try:\n            main(argv)\n        except SystemExit as e:\n"
            "            print(main.__module__, argv[0], e.code, file=sys.__stdout__)\n"
            "print(sorted(m for m in ('torch', 'ignite', 'numpy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], env=base_env(), capture_output=True,
                          text=True, timeout=60)
    assert proc.stdout.split("\n")[:5] == ["ignite_rn50.run --help 0",
                                            "ignite_rn50.run --epoch 2",
                                            "ignite_rn50.evaluate --help 0",
                                            "ignite_rn50.predict --help 0", "[]"], proc
