"""SVHN (cropped digits) from the official .mat files; the 'extra' split is not used."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import scipy.io

from .registry import RawData, ensure_file, register_dataset

log = logging.getLogger(__name__)

URL = "http://ufldl.stanford.edu/housenumbers/"
# torchvision.datasets.SVHN.split_list
SPLIT_LIST = {
    "train": (URL + "train_32x32.mat", "train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
    "test": (URL + "test_32x32.mat", "test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
}


def read_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    log.info("parsing %s", path)
    mat = scipy.io.loadmat(path)
    x = np.ascontiguousarray(mat["X"].transpose(3, 2, 0, 1))  # stored H×W×C×N
    y = mat["y"].reshape(-1).astype(np.int64)
    y[y == 10] = 0  # SVHN labels the digit 0 as class 10
    if len(x) != len(y):
        raise ValueError(f"{path}: {len(x)} images but {len(y)} labels")
    return x, y


@register_dataset("svhn", n_classes=10, channels=3, image_size=(32, 32), pixel_max=255, source=URL)
def read(raw_dir: Path, download: bool) -> RawData:
    # fetch both before parsing either, so a missing test file fails fast
    train, test = [ensure_file(raw_dir / fname, [url], md5, download) for url, fname, md5 in SPLIT_LIST.values()]
    return RawData(read_mat(train), read_mat(test), [str(d) for d in range(10)])
