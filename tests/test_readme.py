"""The README is the truth: CI runs its two first commands, every trainer, evaluate or export
flag it (or a design note) names exists, its commands parse, and its links lead somewhere."""

from __future__ import annotations

import re
import shlex

import pytest

from ignite_rn50.config.parsing import build_parser, config_from_args
from ignite_rn50.evaluate import build_eval_parser
from ignite_rn50.export import build_export_parser
from ignite_rn50.predict import build_predict_parser
from tests.helpers import REPO

README = (REPO / "README.md").read_text()
# the notes whose flags are ours (results.md and teardown.md quote the benchmarks' own flags)
NOTES = {name: (REPO / "docs" / name).read_text() for name in ("design.md", "extending.md")}
PARSERS = {"run": build_parser, "evaluate": build_eval_parser, "export": build_export_parser,
           "predict": build_predict_parser}
# flags of other programs that the README shows (torchrun, srun, tensorboard, the scripts)
FOREIGN = {"--nproc_per_node", "--nnodes", "--node_rank", "--master_addr", "--master_port",
           "--nodes", "--ntasks-per-node", "--logdir", "--data_path"}


def _bash_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S)]


def _quick_start() -> str:
    return README.split("## Quick start", 1)[1].split("\n## ", 1)[0]


def test_ci_runs_exactly_the_readme_commands() -> None:
    commands = _bash_blocks(_quick_start())
    assert len(commands) == 3 and all("\n" not in c for c in commands), commands
    ci_lines = [line for line in (REPO / ".ci/run").read_text().splitlines()
                if line and not line.startswith(("#", "set ", "cd "))]
    assert ci_lines == commands[:2]
    assert commands[0] == ("pip install -r requirements.txt && "
                           "python -m ignite_rn50.run --config configs/quickstart.yaml")
    assert commands[1] == "pip install -r requirements-test.txt && python -m pytest -q"
    assert commands[2] == 'python -m pytest -q -m "not slow"'  # the inner loop


def _known_flags() -> set[str]:
    known = {opt for make in PARSERS.values() for action in make()._actions
             for opt in action.option_strings}
    return known | {f"--no-{opt[2:]}" for opt in known}


@pytest.mark.parametrize("name", ["README.md", *NOTES])
def test_every_flag_named_exists(name: str) -> None:
    text = README if name == "README.md" else NOTES[name]
    ours = "\n".join(line for line in text.splitlines()
                     if "benchmarks/" not in line)  # benchmark scripts' own flags
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9]", ours))
    unknown = {flag for flag in named - _known_flags() - FOREIGN
               if flag != "--synthetic"}  # the README writes --synthetic-* for the family
    assert not unknown, unknown


def _commands() -> list[tuple[str, list[str]]]:
    """(entry point, its arguments) for every ``-m ignite_rn50.<run|evaluate|export>`` line
    of the README's shell blocks (continuation lines joined)."""
    found = []
    for block in _bash_blocks(README):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line.split("&&")[-1], comments=True)
            for i, word in enumerate(words[:-1]):
                module = words[i + 1].removeprefix("ignite_rn50.")
                if word == "-m" and words[i + 1].startswith("ignite_rn50.") and module in PARSERS:
                    found.append((module, words[i + 2:]))
    return found


def test_every_readme_command_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each run/evaluate/export command of the README parses with its own parser, and the
    run's configuration (config file and flags) validates."""
    monkeypatch.chdir(REPO)
    commands = _commands()
    assert {module for module, _ in commands} == set(PARSERS), commands
    for module, args in commands:
        parsed = vars(PARSERS[module]().parse_args(args))
        if module == "run":
            config_from_args(parsed)


def _headings(text: str) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", text, re.M)}


@pytest.mark.parametrize("name", ["README.md", "docs/design.md", "docs/extending.md",
                                  "docs/results.md", "docs/teardown.md"])
def test_links_lead_somewhere(name: str) -> None:
    """Every relative link names a file that exists, and every #anchor a heading in it."""
    source = REPO / name
    text = source.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        linked = (source.parent / path).resolve() if path else source
        assert linked.exists(), (name, target)
        if anchor:
            assert anchor in _headings(linked.read_text()), (name, target)


def test_readme_is_a_guide_and_points_to_the_notes() -> None:
    """A user's guide of about 300 lines; the measurements, the internals and the extension
    walk-throughs live in docs/ and the README links each of them."""
    assert len(README.splitlines()) <= 320
    for note in ("docs/results.md", "docs/design.md", "docs/extending.md", "docs/teardown.md"):
        assert f"]({note})" in README, note
    assert (REPO / "docs" / "results.md").read_text().startswith("# Results")
