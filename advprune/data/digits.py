"""scikit-learn's 8×8 digits: shipped inside scikit-learn, so the pipeline runs offline end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .registry import RawData, register_dataset


@register_dataset(
    "digits", n_classes=10, channels=1, image_size=(8, 8), pixel_max=16,
    source="sklearn.datasets.load_digits", test_fraction=0.2,  # no official split: carve a stratified test set
)
def read(raw_dir: Path, download: bool) -> RawData:
    """Nothing to fetch, so raw_dir and download go unused. Intensities 0..16 stay as they are (pixel_max=16), so
    x / 16 is exactly scikit-learn's scaling to [0, 1]."""
    from sklearn.datasets import load_digits  # only here: importing scikit-learn takes seconds

    d = load_digits()
    x = d.images.astype(np.uint8)[:, None]
    if not np.array_equal(x[:, 0], d.images):
        raise ValueError("load_digits() intensities are not integers in 0..16")
    return RawData((x, d.target.astype(np.int64)), None, [str(c) for c in d.target_names])
