"""Per-class results from a confusion matrix (``outputs/perclass.py``): the numbers, the
two CSV files of ``evaluate --per-class`` and the folder checks before anything runs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from ignite_rn50.errors import UserError
from ignite_rn50.outputs import perclass

CONFUSION = [[8, 2, 0], [1, 5, 4], [0, 0, 0]]  # true class by row; class 2 has no images


def test_per_class_top1_and_most_confused_pairs() -> None:
    rows = perclass.per_class(CONFUSION, ["cat", "dog", "emu"])
    assert [(r["class"], r["images"], r["top1"]) for r in rows] == [
        ("cat", 10, 80.0), ("dog", 10, 50.0), ("emu", 0, None)]
    assert perclass.most_confused(CONFUSION, ["cat", "dog", "emu"]) == [
        {"true": "dog", "predicted": "emu", "images": 4},
        {"true": "cat", "predicted": "dog", "images": 2},
        {"true": "dog", "predicted": "cat", "images": 1}]
    # names that do not fit the matrix are not guessed at: indices instead
    assert [r["class"] for r in perclass.per_class(CONFUSION, ["a"])] == ["0", "1", "2"]


def test_files_hold_the_matrix_and_sum_to_the_overall_top1(tmp_path: Path) -> None:
    per_class, confusion = perclass.write_files(tmp_path / "new", CONFUSION, ["cat", "dog", "emu"])
    with open(per_class) as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0] == {"class": "cat", "index": "0", "images": "10", "top1": "80.0000"}
    assert rows[2]["top1"] == ""
    correct = sum(int(r["images"]) * float(r["top1"] or 0) / 100 for r in rows)
    assert correct / 20 == pytest.approx(13 / 20)
    with open(confusion) as fh:
        table = list(csv.reader(fh))
    assert table[0] == ["true\\predicted", "cat", "dog", "emu"]
    assert table[2] == ["dog", "1", "5", "4"]


def test_folder_checks_refuse_before_anything_runs(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        perclass.check_folder(tmp_path / "file")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "confusion.csv").write_text("mine")
    with pytest.raises(UserError, match="already holds confusion.csv"):
        perclass.check_folder(tmp_path / "old")
    assert (tmp_path / "old" / "confusion.csv").read_text() == "mine"
    assert perclass.check_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # made only when the files are written
