"""Image folders (``data/folder.py``, ``data/files.py``): scikit-learn's digits written as
PNG/JPEG class folders are read as ImageFolder reads them, into memory or left in their files
for the torchvision pipeline's workers (the same pixels and statistics), trained on through
both pipelines to well above chance, and every fault of the layout or of a file is one line
naming it, status 2."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ignite_rn50.data import files, pipelines
from ignite_rn50.data.readers import ReadOptions, load_datasets, load_test_set
from ignite_rn50.data.registry import DATASETS
from ignite_rn50.data.spec import ImageFiles
from ignite_rn50.errors import UserError
from tests.helpers import (
    DIGIT_NAMES,
    FOLDER_RUN,
    assert_one_line_error,
    model_state,
    read_summary,
    run_cli,
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


def _eval_images(data, workers: int) -> torch.Tensor:  # noqa: ANN001 - an ImageSet
    return torch.cat([x for x, _ in pipelines.loader_eval_batches(
        data, 64, rank=0, world_size=1, num_workers=workers, pin_memory=False)])


def test_a_set_left_in_its_files_is_read_per_image_by_the_workers(digits_dir: Path,
                                                                   tmp_path: Path) -> None:
    """The torchvision pipeline's sets (``keep_files``) hold paths, not pixels: its workers
    read each file where it is used, giving the pixels a set read into memory holds, and the
    statistics streamed from the files are the in-memory computation's."""
    root = _copy(digits_dir, tmp_path)
    held, held_val = load_datasets(FOLDER, str(root), ReadOptions(image_size=12))
    kept, kept_val = load_datasets(FOLDER, str(root), ReadOptions(image_size=12, workers=2,
                                                                  keep_files=True))
    assert isinstance(kept.images, ImageFiles) and isinstance(kept_val.images, ImageFiles)
    assert kept.images.shape == held.images.shape and kept.image_size == 12
    assert (kept.mean, kept.std) == (held.mean, held.std) == (kept_val.mean, kept_val.std)
    assert torch.equal(kept.labels, held.labels) and kept.class_names == held.class_names
    assert torch.equal(_eval_images(kept_val, 2), _eval_images(held_val, 0))
    assert torch.equal(files.in_memory(kept_val, 2).images, held_val.images)  # auto's device
    # the training loader's dataset keeps its shard's paths, and no image tensor
    feed = pipelines.Feed(16, seed=1, max_batches=3)
    train = pipelines.LoaderTrainData(kept, feed, num_workers=2, pin_memory=False)
    dataset = train.loader.dataset
    assert dataset.images is None and len(dataset.files) == len(kept) and not any(
        isinstance(v, torch.Tensor) and v.dtype == torch.uint8 for v in vars(dataset).values())
    same = pipelines.LoaderTrainData(held, feed, num_workers=2, pin_memory=False)
    for loader in (train, same):
        loader.set_epoch(2)
    assert all(torch.equal(a, b) and torch.equal(ya, yb)  # same order, draws and pixels
               for (a, ya), (b, yb) in zip(train, same, strict=True))
    # read when used: a file changed after the set was read is seen as it is now
    first = Path(kept_val.images.paths[0])
    Image.new("RGB", (20, 20), (255, 255, 255)).save(first, format=Image.open(first).format)
    now = _eval_images(kept_val, 2)
    assert not torch.equal(now[0], _eval_images(held_val, 0)[0])
    assert torch.equal(now[1:], _eval_images(held_val, 0)[1:])


def test_a_bad_file_of_a_set_left_in_its_files_is_one_line(digits_dir: Path,
                                                            tmp_path: Path) -> None:
    """Checked before the run: decoded for the statistics, or PIL's verify (with given
    statistics, and the test split); a file that passes verify and still does not decode is
    named when a worker reads it, in one line too."""
    root = _copy(digits_dir, tmp_path)
    broken = root / "val" / "three" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n but nothing else")
    for given in ({}, {"mean": (1.0, 2.0, 3.0), "std": (4.0, 5.0, 6.0)}):
        with pytest.raises(UserError, match=f"^{broken} does not decode as an image") as info:
            load_datasets(FOLDER, str(root), ReadOptions(image_size=12, keep_files=True,
                                                         **given))
        assert "\n" not in str(info.value)
    broken.rename(root / "train" / "three" / "broken.png")
    with pytest.raises(UserError, match="broken.png does not decode as an image"):
        load_datasets(FOLDER, str(root), ReadOptions(image_size=12, keep_files=True))
    (root / "train" / "three" / "broken.png").unlink()
    jpeg = next((root / "val").rglob("*.jpg"))
    jpeg.write_bytes(jpeg.read_bytes()[:-40])  # the headers whole: verify passes
    _, val = load_datasets(FOLDER, str(root), ReadOptions(image_size=12, keep_files=True))
    with pytest.raises(UserError, match=f"^{jpeg} does not decode as an image") as info:
        _eval_images(val, 2)
    assert "\n" not in str(info.value) and "truncated" in str(info.value)


def _copy(digits_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "digits"
    shutil.copytree(digits_dir, root)
    return root


def _refusal(root: Path, needle: str) -> None:
    """Through the command: one line, status 2, and no output folder left behind."""
    out = root.parent / "refused"
    assert_one_line_error(run_main([*FOLDER_RUN, "--data", str(root), "--output-dir",
                                    str(out)]), needle)
    assert not out.exists()


@pytest.mark.parametrize("tall", [True, False])
def test_an_oblong_image_is_resized_on_its_shorter_side_then_centre_cropped(
        tmp_path: Path, tall: bool) -> None:
    """48 x 24 px (as if tall), in bands of 8 / 32 / 8 rows (red, green, blue), the green one
    darker in its first 6 columns: at 12 px it is 24 x 12 with bands of 4 / 16 / 4 rows, and
    the centre 12 rows are green alone, the first 3 columns darker (a crop without the resize would
    show none, a squeeze would keep red and blue)."""
    bands = torch.zeros(48, 24, 3, dtype=torch.uint8)
    bands[:8, :, 0], bands[8:40, :, 1], bands[40:, :, 2] = 255, 255, 255
    bands[8:40, :6, 1] = 100
    image = bands if tall else bands.transpose(0, 1)
    Image.fromarray(image.contiguous().numpy()).save(tmp_path / "oblong.png")
    read = ImageFiles((str(tmp_path / "oblong.png"),), 12)
    pixels = torch.from_numpy(np.asarray(read.load(0)))
    assert pixels.shape == (12, 12, 3)
    pixels = pixels if tall else pixels.transpose(0, 1)
    assert pixels[..., [0, 2]].max() == 0
    assert pixels[:, :2, 1].tolist() == [[100] * 2] * 12  # column 2 is where they blend
    assert pixels[:, 4:, 1].min() == 255


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
    assert not (tmp_path / "b").exists()  # nothing written: not even its log and lock


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
    """Read from the files by two workers (``keep_files``), as sets too big for memory."""
    proc = run_cli([*FOLDER_RUN, "--data-pipeline", "torchvision", "--num-workers", "2",
                    "--data", str(digits_dir), "--output-dir", str(tmp_path / "run")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = read_summary(tmp_path / "run")
    # chance is 0.1; this run reaches 0.506 (0.562 with no workers: other crops), so the
    # bound asks for well above chance without resting on one image of 160
    assert summary["input_pipeline"] == "torchvision" and summary["best_top1"] > 0.3
