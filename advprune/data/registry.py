"""Dataset registry and the download helpers the per-dataset modules share."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

log = logging.getLogger(__name__)


class RawData(NamedTuple):
    """What a dataset's reader returns: x uint8 N×C×H×W, y int64 N, and the class names by label."""

    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray] | None  # None: no official test split, carve one (spec.test_fraction)
    class_names: list[str]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    n_classes: int
    channels: int
    image_size: tuple[int, int]  # (H, W)
    pixel_max: int  # the stored value that maps to 1.0
    source: str  # where the raw data comes from, recorded in meta.json
    read: Callable[[Path, bool], RawData]  # read(raw_dir, download): fetch raw files if allowed, then parse
    test_fraction: float | None = None  # only for datasets without an official test split


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(name: str, **fields) -> Callable:
    """Decorate a dataset's reader; `fields` are the remaining DatasetSpec fields."""

    def decorate(read: Callable[[Path, bool], RawData]) -> Callable[[Path, bool], RawData]:
        DATASETS[name] = DatasetSpec(name=name, read=read, **fields)
        return read

    return decorate


def missing_error(path: Path, url: str, md5: str, into: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"{path} not found: rerun with downloading enabled (no --no-download, config data.download: true) "
        f"or put {url} (md5 {md5}) into {into} yourself"
    )


def ensure_file(path: Path, urls: Sequence[str], md5: str, download: bool) -> Path:
    """Make sure the single raw file `path` exists, downloading it (md5-checked) from the first mirror that works."""
    if path.is_file():
        return path
    if not download:
        raise missing_error(path, urls[0], md5, path.parent)
    from torchvision.datasets.utils import download_url  # only here: importing torchvision takes seconds

    errors = []
    for url in urls:
        log.info("downloading %s", url)
        try:
            download_url(url, path.parent, path.name, md5)  # raises RuntimeError on an md5 mismatch
            return path
        except (OSError, RuntimeError) as err:  # URLError is an OSError
            log.warning("download of %s failed: %s", url, err)
            errors.append(f"{url}: {err}")
    raise RuntimeError(f"could not download {path.name}: " + "; ".join(errors))


def ensure_archive(raw_dir: Path, needed: Sequence[str], url: str, md5: str, download: bool) -> None:
    """Make sure the files `needed` (relative to raw_dir) exist, extracting the archive at `url`, downloading it
    first if it is not already in raw_dir with the published md5 (offline machines can drop the archive there)."""
    missing = [raw_dir / f for f in needed if not (raw_dir / f).is_file()]
    if not missing:
        return
    from torchvision.datasets.utils import check_integrity, download_and_extract_archive  # see ensure_file

    archive = raw_dir / url.rsplit("/", 1)[-1]
    if not download and not check_integrity(archive, md5):
        raise missing_error(missing[0], url, md5, raw_dir)
    log.info("fetching (if not already verified in %s) and extracting %s", raw_dir, url)
    download_and_extract_archive(url, raw_dir, md5=md5)  # reuses an archive already there whose md5 matches
    still = [p for p in missing if not p.is_file()]
    if still:
        raise FileNotFoundError(f"{still[0]} not found even after extracting {archive}")
