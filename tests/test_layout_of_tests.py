"""The tests mirror the package (as ignite's and timm's do): ``tests/<room>/test_<module>.py``
for ``ignite_rn50/<room>/<module>.py``, ``tests/test_<module>.py`` for a top-level module
(the entry points), and a few files at the top for what is no single module (below)."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import REPO

TESTS = REPO / "tests"
PACKAGE = REPO / "ignite_rn50"

# top-level test files that check no module of the package -> what they keep true
CONCERNS = {
    "test_structure.py": PACKAGE,  # the package's shape and layers
    "test_layout_of_tests.py": TESTS,  # this mirror
    "test_scripts.py": REPO / "test",  # the ModelZoo scripts test/*.sh
    "test_readme.py": REPO / "README.md",
    "test_extending.py": REPO / "docs" / "extending.md",
    "test_hostile_input.py": PACKAGE,  # every entry point, fed what users get wrong
}


def _mirrors(path: Path) -> bool:
    rel = path.relative_to(TESTS)
    module = rel.name.removeprefix("test_")
    if len(rel.parts) == 1:
        return (PACKAGE / module).is_file() or (rel.name in CONCERNS
                                                and CONCERNS[rel.name].exists())
    room = PACKAGE / rel.parts[0]
    return len(rel.parts) == 2 and (room / "__init__.py").is_file() and \
        (room / module).is_file() and (path.parent / "__init__.py").is_file()


def test_every_test_module_mirrors_a_module_of_the_package() -> None:
    """A new test file goes beside its module's mirror: ``tests/data/test_readers.py`` for
    ``ignite_rn50/data/readers.py``; each room folder of tests/ is a package (``__init__.py``)
    so that two rooms may hold test files of one name."""
    modules = sorted(TESTS.rglob("test_*.py"))
    assert len(modules) > 20, modules  # the check sees what it looks for
    strays = [str(p.relative_to(TESTS)) for p in modules if not _mirrors(p)]
    assert not strays, f"{strays}: name each after the module it tests, in its room's folder"
