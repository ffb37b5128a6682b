"""Any dataset's splits by its spec (``spec.py``): where ``--data`` points, ``--download``
(the one place a dataset is fetched), and the training and test splits as ``ImageSet``s.
The spec's methods do the dataset's own part; nothing here knows a dataset by name."""

from __future__ import annotations

import logging
from pathlib import Path

from ignite_rn50.data.spec import (
    DatasetSpec,
    ImageSet,
    ReadOptions,
    SyntheticSizes,
)
from ignite_rn50.data.synthetic import make_synthetic
from ignite_rn50.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["ImageSet", "ReadOptions", "SyntheticSizes", "make_synthetic", "load_datasets",
           "load_test_set", "num_classes", "locate", "ensure_files"]


def _options(options: ReadOptions | SyntheticSizes | None) -> ReadOptions:
    """The readers' options; bare synthetic sizes (as older callers pass them) too."""
    if options is None:
        return ReadOptions()
    if isinstance(options, SyntheticSizes):
        return ReadOptions(synthetic=options)
    return options


def locate(spec: DatasetSpec, data: str | None) -> Path | None:
    """Where the dataset's files are (None for a generated dataset)."""
    return spec.locate(data)


def num_classes(spec: DatasetSpec, data: str | None,
                options: ReadOptions | SyntheticSizes | None = None) -> int:
    return spec.count_classes(locate(spec, data), _options(options))


def load_test_set(spec: DatasetSpec, data: str | None,
                  options: ReadOptions | SyntheticSizes | None = None) -> ImageSet:
    """The test split alone (evaluating a checkpoint reads nothing else)."""
    return spec.read("test", locate(spec, data), _options(options))


def load_datasets(spec: DatasetSpec, data: str | None,
                  options: ReadOptions | SyntheticSizes | None = None
                  ) -> tuple[ImageSet, ImageSet]:
    """The training split, then the test split (which may take the first's statistics)."""
    where, opts = locate(spec, data), _options(options)
    train = spec.read("train", where, opts)
    return train, spec.read("test", where, opts, train=train)


def download(spec: DatasetSpec, root: Path) -> None:
    """torchvision's downloader (MD5-checked); offline it fails with where to put the files."""
    from torchvision.datasets.utils import download_and_extract_archive

    fetch = spec.download
    if fetch is None:
        raise UserError(f"--download: {spec.title} cannot be downloaded; drop --download and "
                        f"pass {spec.data_help}")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--data {root} cannot be created ({exc.strerror}); pass a writable "
                        "folder") from None
    try:
        download_and_extract_archive(fetch.url, str(root), filename=fetch.archive, md5=fetch.md5)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        reason = getattr(exc, "reason", None) or exc
        raise UserError(f"could not download {spec.title} from {fetch.url} ({reason}); "
                        f"download {fetch.archive} by hand and extract it into {root} (giving "
                        f"{root / fetch.folder}/)") from None


def ensure_files(spec: DatasetSpec, path: str | Path) -> None:
    """--download: fetch the dataset unless it is already there (one process per job)."""
    fetch = spec.download
    path = Path(path).expanduser()
    root = path.parent if fetch is not None and path.name == fetch.folder else path
    if not spec.present(root):
        log.info("downloading %s into %s", spec.title, root)
        download(spec, root)
