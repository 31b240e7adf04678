"""MNIST from the original idx files (gzipped or not)."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np

from .registry import RawData, ensure_file, register_dataset

log = logging.getLogger(__name__)

# torchvision.datasets.MNIST.mirrors and .resources
MIRRORS = ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"]
RESOURCES = [
    ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
]


def read_idx(path: Path) -> np.ndarray:
    """An idx file: magic (0, 0, dtype code, ndim), ndim big-endian int32 sizes, then the data. MNIST is all
    uint8 (code 0x08), the only type read here."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        raw = f.read()
    zero, code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or code != 0x08:
        raise ValueError(f"{path}: not a uint8 idx file (magic {raw[:4].hex()})")
    dims = np.frombuffer(raw, ">i4", count=ndim, offset=4)
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != np.prod(dims):
        raise ValueError(f"{path}: header says {tuple(dims)} but holds {data.size} values")
    return data.reshape(dims)


def _fetch(raw_dir: Path, filename: str, md5: str, download: bool) -> Path:
    plain = raw_dir / filename.removesuffix(".gz")  # already decompressed by hand: use as is
    if plain.is_file():
        return plain
    return ensure_file(raw_dir / filename, [m + filename for m in MIRRORS], md5, download)


@register_dataset("mnist", n_classes=10, channels=1, image_size=(28, 28), pixel_max=255, source=MIRRORS[0])
def read(raw_dir: Path, download: bool) -> RawData:
    paths = [_fetch(raw_dir, filename, md5, download) for filename, md5 in RESOURCES]
    log.info("parsing %s", ", ".join(p.name for p in paths))
    arrays = [read_idx(p) for p in paths]
    splits = [(images[:, None], labels.astype(np.int64)) for images, labels in (arrays[:2], arrays[2:])]
    for (x, y), name in zip(splits, ("train", "test")):
        if len(x) != len(y):
            raise ValueError(f"mnist {name}: {len(x)} images but {len(y)} labels")
    return RawData(splits[0], splits[1], [str(d) for d in range(10)])
