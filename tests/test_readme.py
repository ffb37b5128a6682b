"""The README is the truth: CI runs its two commands, and every trainer, evaluate or export
flag it names exists."""

from __future__ import annotations

import re

from ignite_rn50.config.parsing import build_parser
from ignite_rn50.evaluate import build_eval_parser
from ignite_rn50.export import build_export_parser

from .conftest import REPO

README = (REPO / "README.md").read_text()
# flags of other programs that the README shows (torchrun, srun, tensorboard, the scripts)
FOREIGN = {"--nproc_per_node", "--nnodes", "--node_rank", "--master_addr", "--master_port",
           "--nodes", "--ntasks-per-node", "--logdir", "--data_path", "--resume",
           # Ascend's atc
           "--model", "--framework", "--input_format", "--input_shape", "--insert_op_conf",
           "--soc_version", "--log", "--dynamic_batch_size"}


def _quick_start_commands() -> list[str]:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_ci_runs_exactly_the_readme_commands() -> None:
    commands = _quick_start_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    ci_lines = [line for line in (REPO / ".ci/run").read_text().splitlines()
                if line and not line.startswith(("#", "set ", "cd "))]
    assert ci_lines == commands
    assert "configs/quickstart.yaml" in commands[0] and "pytest" in commands[1]


def test_every_trainer_flag_in_readme_exists() -> None:
    known = {opt for parser in (build_parser(), build_eval_parser(), build_export_parser())
             for action in parser._actions for opt in action.option_strings}
    known |= {f"--no-{opt[2:]}" for opt in known}
    trainer_lines = "\n".join(line for line in README.splitlines()
                              if "benchmarks/" not in line)  # benchmark scripts' own flags
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9]", trainer_lines))
    unknown = {flag for flag in named - known - FOREIGN
               if flag != "--synthetic"}  # the README writes --synthetic-* for the family
    assert not unknown, unknown
