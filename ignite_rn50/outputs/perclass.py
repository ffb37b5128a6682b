"""Per-class results from one evaluation's confusion matrix (true class by row, predicted by
column, image counts): each class's top-1, the most confused pairs, and the two CSV files of
``evaluate --per-class``. Plain lists in, plain data out (no torch): summary.json, the CSVs
and the trackers all read the same numbers from here."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Sequence

from ignite_rn50.errors import UserError, path_problem

Matrix = Sequence[Sequence[int]]
FILES = ("per_class.csv", "confusion.csv")


def names_for(class_names: Sequence[str] | None, classes: int) -> list[str]:
    """The dataset's class names, or the indices as text where none are known."""
    if class_names is not None and len(class_names) == classes:
        return [str(name) for name in class_names]
    return [str(i) for i in range(classes)]


def per_class(confusion: Matrix, class_names: Sequence[str] | None = None
              ) -> list[dict[str, Any]]:
    """One row per class: ``class``, ``index``, ``images`` (its test images) and ``top1`` in %
    (as ``evaluate`` prints it; None for a class without test images)."""
    names = names_for(class_names, len(confusion))
    rows = []
    for i, row in enumerate(confusion):
        images = int(sum(row))
        rows.append({"class": names[i], "index": i, "images": images,
                     "top1": 100.0 * int(row[i]) / images if images else None})
    return rows


def most_confused(confusion: Matrix, class_names: Sequence[str] | None = None,
                  top: int = 10) -> list[dict[str, Any]]:
    """The ``top`` largest off-diagonal cells: ``true``, ``predicted`` (names) and ``images``."""
    names = names_for(class_names, len(confusion))
    cells = [(int(count), i, j) for i, row in enumerate(confusion)
             for j, count in enumerate(row) if i != j and count]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [{"true": names[i], "predicted": names[j], "images": n} for n, i, j in cells[:top]]


def summary_entry(confusion: Matrix, class_names: Sequence[str] | None, epoch: int
                  ) -> dict[str, Any]:
    """What summary.json keeps of the best epoch's evaluation."""
    return {"epoch": epoch, "classes": per_class(confusion, class_names),
            "most_confused": most_confused(confusion, class_names)}


def check_folder(folder: Path) -> Path:
    """``--per-class DIR`` before anything runs: a folder (made when the files are written)
    that holds no per_class.csv/confusion.csv yet; else one UserError naming the problem and
    the fix."""
    folder = Path(folder).expanduser()
    problem = path_problem(folder)
    if problem:
        raise UserError(f"--per-class {folder} {problem}; pass another folder")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--per-class {folder} is a file; pass a folder to write "
                        f"{' and '.join(FILES)} into")
    taken = [name for name in FILES if (folder / name).exists()]
    if taken:
        raise UserError(f"--per-class {folder} already holds {', '.join(taken)}; pass another "
                        "folder or move those files away first")
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise UserError(f"--per-class {folder}: {existing} is not a writable folder; pass a "
                        "writable folder")
    return folder


def write_files(folder: Path, confusion: Matrix, class_names: Sequence[str] | None
                ) -> tuple[Path, Path]:
    """per_class.csv (``class,index,images,top1``) and confusion.csv (a header of class names,
    then one row per true class, its counts by predicted class)."""
    names = names_for(class_names, len(confusion))
    folder.mkdir(parents=True, exist_ok=True)
    per_class_file, confusion_file = folder / FILES[0], folder / FILES[1]
    with open(per_class_file, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["class", "index", "images", "top1"])
        for row in per_class(confusion, names):
            top1 = "" if row["top1"] is None else f"{row['top1']:.4f}"
            writer.writerow([row["class"], row["index"], row["images"], top1])
    with open(confusion_file, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["true\\predicted", *names])
        for name, row in zip(names, confusion, strict=True):
            writer.writerow([name, *(int(v) for v in row)])
    return per_class_file, confusion_file
