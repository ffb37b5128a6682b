"""``python -m ignite_rn50.predict`` (``predict.py``): a checkpoint trained on image folders
names the right class of most held-out images, in text and JSON; an mmcls 0.x file gives its
``meta["CLASSES"]``; an unreadable image is named and the others still predicted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ignite_rn50.model.weights import to_mmcls
from tests.helpers import DIGIT_NAMES, assert_one_line_error, model_state, run_cli, run_main


def _predict(*args: str) -> tuple[int, list[str], str]:
    proc = run_main([*args], module="ignite_rn50.predict")
    return proc.returncode, proc.stdout.strip().splitlines(), proc.stderr


def test_names_the_right_class_of_most_held_out_images(trained_folder: Path,
                                                       digits_dir: Path) -> None:
    checkpoint = str(trained_folder / "checkpoint_4.pt")
    status, lines, err = _predict("--checkpoint", checkpoint, str(digits_dir / "val"), "--json",
                                  "--topk", "3")
    assert status == 0, err
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 160 and all(len(r["top"]) == 3 for r in rows)
    right = sum(Path(r["path"]).parent.name == r["top"][0]["class"] for r in rows)
    assert right > 0.5 * len(rows), right  # chance: 16
    first = rows[0]["top"]
    assert sorted(DIGIT_NAMES)[first[0]["index"]] == first[0]["class"]
    assert first[0]["prob"] >= first[1]["prob"] >= first[2]["prob"] > 0
    # text: one line per image, "PATH: NAME PROB%, ..." with the same classes
    status, text, err = _predict("--checkpoint", checkpoint, rows[0]["path"], "--topk", "3")
    assert status == 0, err
    assert text == [f"{rows[0]['path']}: " + ", ".join(f"{t['class']} {100 * t['prob']:.2f}%"
                                                      for t in first)]


def test_an_unreadable_image_is_named_and_the_others_predicted(trained_folder: Path,
                                                               digits_dir: Path,
                                                               tmp_path: Path) -> None:
    folder = tmp_path / "images"
    shutil.copytree(digits_dir / "val" / "seven", folder / "seven")
    (folder / "seven" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (folder / "notes.txt").write_text("not an image file: not read")
    proc = run_cli(["--checkpoint", str(trained_folder / "checkpoint_4.pt"), str(folder)],
                   module="ignite_rn50.predict")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    named = [line for line in proc.stderr.splitlines() if "broken.jpg" in line]
    assert len(named) == 1 and "does not decode as an image" in named[0]
    assert len(proc.stdout.strip().splitlines()) == 16


def test_an_mmcls_file_gives_its_meta_classes(trained_folder: Path, digits_dir: Path,
                                              tmp_path: Path) -> None:
    facts = torch.load(trained_folder / "checkpoint_4.pt", weights_only=True)["data"]
    mmcls = tmp_path / "mmcls.pth"
    classes = [f"digit {name}" for name in facts["class_names"]]
    torch.save({"meta": {"CLASSES": classes},
                "state_dict": to_mmcls(model_state(trained_folder / "checkpoint_4.pt"))}, mmcls)
    stats = [str(v) for v in facts["mean"]], [str(v) for v in facts["std"]]
    status, lines, err = _predict("--checkpoint", str(mmcls), str(digits_dir / "val" / "two"),
                                  "--json", "--depth", "18", "--image-size", "12", "--dataset",
                                  "folder", "--mean", *stats[0], "--std", *stats[1])
    assert status == 0, err
    theirs = [[t["class"] for t in json.loads(line)["top"]] for line in lines]
    status, lines, err = _predict("--checkpoint", str(trained_folder / "checkpoint_4.pt"),
                                  str(digits_dir / "val" / "two"), "--json")
    ours = [[f"digit {t['class']}" for t in json.loads(line)["top"]] for line in lines]
    assert len(theirs) == 16 and theirs == ours  # the same weights, named by meta.CLASSES


@pytest.mark.slow
def test_weights_ema_by_default_raw_when_asked(ema_runs: tuple[Path, Path],
                                               tmp_path: Path) -> None:
    """A checkpoint of a run with --ema-momentum predicts with the EMA (as --weights ema);
    --weights raw with the trained model; --weights ema on a file without EMA: one line."""
    from PIL import Image

    whole, _ = ema_runs
    image = tmp_path / "x.png"
    pixels = torch.randint(0, 256, (8, 8, 3), generator=torch.Generator().manual_seed(0))
    Image.fromarray(pixels.to(torch.uint8).numpy()).save(image)
    base = ["--checkpoint", str(whole / "checkpoint_2.pt"), str(image), "--json",
            "--topk", "10"]
    runs = {}
    for name, flags in (("default", []), ("ema", ["--weights", "ema"]),
                        ("raw", ["--weights", "raw"])):
        status, lines, err = _predict(*base, *flags)
        assert status == 0, err
        runs[name] = json.loads(lines[-1])["top"]
    assert runs["default"] == runs["ema"] != runs["raw"]
    proc = run_main(["--checkpoint", str(whole / "checkpoint_2.pt"), str(image), "--weights",
                     "ema"], module="ignite_rn50.predict")
    assert proc.returncode == 0
    no_ema = tmp_path / "no_ema.pt"
    state = torch.load(whole / "checkpoint_2.pt", weights_only=True)
    del state["ema_model"]
    torch.save(state, no_ema)
    proc = run_main(["--checkpoint", str(no_ema), str(image), "--weights", "ema"],
                    module="ignite_rn50.predict")
    assert_one_line_error(proc, "--weights ema", "holds no EMA weights")


def _one_image(path: Path, side: int) -> Path:
    from PIL import Image

    pixels = torch.randint(0, 256, (side, side, 3), generator=torch.Generator().manual_seed(1))
    Image.fromarray(pixels.to(torch.uint8).numpy()).save(path)
    return path


@pytest.mark.slow
def test_names_come_from_cifars_meta_or_are_the_indices(trained: Path, cifar_dir: Path,
                                                        tmp_path: Path) -> None:
    """A CIFAR-100 run's checkpoint names its classes as the dataset's ``meta`` file does; a
    run on a dataset without names (synthetic) gives the indices as the names."""
    out = tmp_path / "cifar"
    proc = run_main(["--device", "cpu", "--data", str(cifar_dir), "--depth", "18", "--epochs",
                     "1", "--batch-size", "32", "--loggers", "--progress-bar", "off",
                     "--num-workers", "0", "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for checkpoint, side, name in ((out / "checkpoint_1.pt", 32, "class{}"),
                                   (trained / "checkpoint_1.pt", 8, "{}")):
        image = _one_image(tmp_path / f"x{side}.png", side)
        status, lines, err = _predict("--checkpoint", str(checkpoint), str(image), "--json",
                                      "--topk", "7")
        assert status == 0, err
        top = json.loads(lines[-1])["top"]
        assert len(top) == 7 and [t["class"] for t in top] == [name.format(t["index"])
                                                              for t in top]
        assert len({t["index"] for t in top}) == 7
