"""Datasets: download, prepare into uint8 arrays with fixed train/val/test splits, and load them back.

Prepared layout (one directory per dataset): {train,val,test}_{x,y}.npy (x uint8 N×C×H×W, y int64 N) and
meta.json, written last, so its presence means the directory is complete. meta.json records each file's sha256;
load_split refuses a file that no longer has it, and labels or shapes that do not fit meta.json.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from . import cifar, digits, mnist, svhn, tinyimagenet  # noqa: F401  (importing registers the datasets)
from .arrays import SPLITS, ArraySplit, PreparedDataError, data_sha256, load_meta, load_split, save_array, save_json, sha256, stratified_split
from .registry import DATASETS, DatasetSpec, RawData, register_dataset

__all__ = [
    "DATASETS", "ArraySplit", "DatasetSpec", "PreparedDataError", "RawData", "data_sha256", "load_meta", "load_split", "prepare_dataset",
    "register_dataset",
]

log = logging.getLogger(__name__)


def _check(spec: DatasetSpec, split: str, x: np.ndarray, y: np.ndarray) -> None:
    """Fail at preparation, not hours later in training, when a reader or a raw file is off."""
    want = (spec.channels, *spec.image_size)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != want or y.shape != (len(x),):
        raise ValueError(f"{spec.name} {split}: expected uint8 x of shape N×{want} and N labels, "
                         f"got {x.dtype} {x.shape} and {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= spec.n_classes):
        raise ValueError(f"{spec.name} {split}: labels outside [0, {spec.n_classes})")
    if x.max(initial=0) > spec.pixel_max:
        raise ValueError(f"{spec.name} {split}: pixel values above pixel_max={spec.pixel_max}")


def prepare_dataset(
    name: str,
    raw_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    val_fraction: float = 0.15,
    split_seed: int = 0,
    download: bool = True,
) -> dict:
    """Fetch (if `download`) and read the raw `name` dataset from raw_dir, carve the splits it lacks (stratified,
    reproducible from split_seed) and write the prepared arrays and meta.json into out_dir. Returns the meta."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    spec = DATASETS[name]
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # an old meta.json would vouch for arrays this run is about to replace
    (out_dir / "meta.json").unlink(missing_ok=True)

    raw = spec.read(raw_dir, download)
    if len(raw.class_names) != spec.n_classes:
        raise ValueError(f"{name}: {len(raw.class_names)} class names, expected {spec.n_classes}")
    rng = np.random.default_rng(split_seed)
    x, y = raw.train
    if raw.test is None:
        keep, take = stratified_split(y, spec.test_fraction, rng)
        test = x[take], y[take]
        x, y = x[keep], y[keep]
    else:
        test = raw.test
    keep, take = stratified_split(y, val_fraction, rng)
    splits = {"train": (x[keep], y[keep]), "val": (x[take], y[take]), "test": test}

    files = {}
    for split in SPLITS:
        sx, sy = np.ascontiguousarray(splits[split][0]), splits[split][1].astype(np.int64)
        _check(spec, split, sx, sy)
        for suffix, array in (("x", sx), ("y", sy)):
            fname = f"{split}_{suffix}.npy"
            save_array(out_dir / fname, array)
            files[fname] = sha256(out_dir / fname)
        log.info("%s %s: %d examples", name, split, len(sy))
    meta = {
        "name": name,
        "n_classes": spec.n_classes,
        "channels": spec.channels,
        "image_size": list(spec.image_size),
        "pixel_max": spec.pixel_max,
        "class_names": list(raw.class_names),
        "splits": {split: len(splits[split][1]) for split in SPLITS},
        "source": spec.source,
        "val_fraction": val_fraction,
        "split_seed": split_seed,
        "files": files,
    }
    save_json(out_dir / "meta.json", meta)
    log.info("wrote %s", out_dir)
    return meta
