"""Image folders (``data/folder.py``): scikit-learn's digits written as PNG/JPEG class
folders are read as ImageFolder reads them, trained on through both pipelines to well above
chance, and every fault of the layout or of a file is one line naming it, status 2."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from ignite_rn50.data.readers import ReadOptions, load_datasets, load_test_set
from ignite_rn50.data.registry import DATASETS
from ignite_rn50.errors import UserError
from tests.helpers import (
    DIGIT_NAMES,
    FOLDER_RUN,
    assert_one_line_error,
    model_state,
    read_summary,
    run_main,
)

FOLDER = DATASETS["folder"]


def test_reads_classes_files_and_statistics_as_imagefolder_does(digits_dir: Path) -> None:
    from torchvision.datasets import ImageFolder

    train, val = load_datasets(FOLDER, str(digits_dir), ReadOptions(image_size=12))
    reference = ImageFolder(str(digits_dir / "train"))
    assert train.class_names == tuple(reference.classes) == tuple(sorted(DIGIT_NAMES))
    assert train.labels.tolist() == reference.targets
    assert train.images.shape == (500, 3, 12, 12) and train.images.dtype == torch.uint8
    assert val.images.shape == (160, 3, 12, 12) and val.labels.bincount().tolist() == [16] * 10
    # grey, palette and RGBA files all become RGB; a grey one is the same in its channels
    modes = [Image.open(path).mode for path, _ in reference.samples]
    assert {"L", "RGB", "P", "RGBA"} <= set(modes)
    grey = modes.index("L")
    assert torch.equal(train.images[grey, 0], train.images[grey, 2])
    # the statistics are the training split's, on 0-255, and the test split takes them
    pixels = train.images.double().transpose(0, 1).reshape(3, -1)
    assert train.mean == pytest.approx(pixels.mean(1).tolist(), abs=1e-3)
    assert train.std == pytest.approx(pixels.std(1, unbiased=False).tolist(), abs=1e-3)
    assert val.mean == train.mean and val.std == train.std
    # given statistics win; the test split alone takes the training split's
    given = ReadOptions(image_size=12, mean=(1.0, 2.0, 3.0), std=(4.0, 5.0, 6.0))
    assert load_test_set(FOLDER, str(digits_dir), given).mean == (1.0, 2.0, 3.0)
    assert load_test_set(FOLDER, str(digits_dir), ReadOptions(image_size=12)).std == train.std


def _copy(digits_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "digits"
    shutil.copytree(digits_dir, root)
    return root


def _refusal(root: Path, needle: str) -> None:
    with pytest.raises(UserError) as info:
        load_datasets(FOLDER, str(root), ReadOptions(image_size=12))
    assert needle in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_each_fault_of_the_layout_is_one_line_naming_it(digits_dir: Path,
                                                        tmp_path: Path) -> None:
    root = _copy(digits_dir, tmp_path)
    (root / "train" / ".hidden.png").write_bytes(b"not an image")  # ignored, as other files
    (root / "train" / "one" / "notes.txt").write_text("ignored")
    shutil.move(root / "val", root / "test")  # test/ where there is no val/
    assert len(load_test_set(FOLDER, str(root), ReadOptions(image_size=12))) == 160
    (root / "test" / "eleven").mkdir()
    (root / "test" / "eleven" / "a.png").write_bytes((root / "train" / "one").glob(
        "*.png").__next__().read_bytes())
    _refusal(root, f"{root / 'test' / 'eleven'} is a class that {root / 'train'} lacks")
    shutil.rmtree(root / "test" / "eleven")
    for image in (root / "train" / "two").iterdir():
        image.unlink()
    _refusal(root, f"{root / 'train' / 'two'} holds no image file")
    shutil.rmtree(root / "test")
    _refusal(root, "has no val/ or test/ folder")
    for name in DIGIT_NAMES[1:]:
        shutil.rmtree(root / "train" / name, ignore_errors=True)
    (root / "val").mkdir()
    _refusal(root, "holds 1 class folder(s); a classifier needs at least two")
    shutil.rmtree(root / "train")
    _refusal(root, "has no train/ folder")


def test_bad_layout_and_a_file_that_does_not_decode_stop_the_run(digits_dir: Path,
                                                                 tmp_path: Path) -> None:
    root = _copy(digits_dir, tmp_path)
    shutil.rmtree(root / "val")
    proc = run_main([*FOLDER_RUN, "--data", str(root), "--output-dir", str(tmp_path / "a")])
    assert_one_line_error(proc, "has no val/ or test/ folder")
    assert not (tmp_path / "a").exists()
    shutil.copytree(digits_dir / "val", root / "val")
    broken = root / "train" / "three" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n but nothing else")
    proc = run_main([*FOLDER_RUN, "--data", str(root), "--output-dir", str(tmp_path / "b")])
    assert_one_line_error(proc, f"{broken} does not decode as an image")
    assert not list((tmp_path / "b").glob("*.pt"))


def test_trains_to_well_above_chance_and_records_its_data(trained_folder: Path) -> None:
    summary = read_summary(trained_folder)
    assert summary["best_top1"] > 0.5, summary["history"]  # chance 0.1
    best = summary["best_per_class"]
    assert [c["class"] for c in best["classes"]] == sorted(DIGIT_NAMES)
    facts = torch.load(trained_folder / "checkpoint_4.pt", weights_only=True)["data"]
    assert facts["class_names"] == sorted(DIGIT_NAMES) and facts["image_size"] == 12
    assert facts["stem"] == "cifar" and len(facts["mean"]) == 3 and facts["num_classes"] == 10
    assert model_state(trained_folder / "checkpoint_4.pt")["fc.weight"].shape == (10, 512)


@pytest.mark.slow
def test_the_torchvision_pipeline_trains_on_the_files_too(digits_dir: Path,
                                                          tmp_path: Path) -> None:
    proc = run_main([*FOLDER_RUN, "--data-pipeline", "torchvision", "--data", str(digits_dir),
                     "--output-dir", str(tmp_path / "run")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = read_summary(tmp_path / "run")
    assert summary["input_pipeline"] == "torchvision" and summary["best_top1"] > 0.5
