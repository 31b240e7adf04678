"""CIFAR-10 and CIFAR-100 from the official python-pickle batches."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np

from .registry import RawData, ensure_archive, register_dataset

log = logging.getLogger(__name__)

# torchvision.datasets.CIFAR10 / CIFAR100: url, tgz_md5, base_folder
CIFAR10_URL, CIFAR10_MD5 = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"
CIFAR100_URL, CIFAR100_MD5 = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")  # written by Python 2: keys and names are bytes


def read_batches(paths: list[Path], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate batches; each row of b"data" is 3072 uint8 values, the 32×32 R, G and B planes in turn."""
    xs, ys = [], []
    for path in paths:
        log.info("parsing %s", path)
        batch = _unpickle(path)
        xs.append(np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[label_key], np.int64))
        if len(xs[-1]) != len(ys[-1]):
            raise ValueError(f"{path}: {len(xs[-1])} images but {len(ys[-1])} labels")
    return np.concatenate(xs), np.concatenate(ys)


def _read(raw_dir: Path, download: bool, url: str, md5: str, folder: str, train: list[str], test: str,
          meta: str, names_key: bytes, label_key: bytes) -> RawData:
    ensure_archive(raw_dir, [f"{folder}/{f}" for f in [*train, test, meta]], url, md5, download)
    base = raw_dir / folder
    names = [n.decode() for n in _unpickle(base / meta)[names_key]]
    return RawData(read_batches([base / f for f in train], label_key), read_batches([base / test], label_key), names)


@register_dataset("cifar10", n_classes=10, channels=3, image_size=(32, 32), pixel_max=255, source=CIFAR10_URL)
def read_cifar10(raw_dir: Path, download: bool) -> RawData:
    return _read(raw_dir, download, CIFAR10_URL, CIFAR10_MD5, "cifar-10-batches-py",
                 [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta", b"label_names", b"labels")


@register_dataset("cifar100", n_classes=100, channels=3, image_size=(32, 32), pixel_max=255, source=CIFAR100_URL)
def read_cifar100(raw_dir: Path, download: bool) -> RawData:
    return _read(raw_dir, download, CIFAR100_URL, CIFAR100_MD5, "cifar-100-python",
                 ["train"], "test", "meta", b"fine_label_names", b"fine_labels")
