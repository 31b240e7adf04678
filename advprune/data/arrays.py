"""The prepared on-disk format ({split}_x.npy, {split}_y.npy, meta.json) and in-memory splits."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from advprune.data.augment import Augmentation

SPLITS = ("train", "val", "test")


def _atomic_write(path: Path, write) -> None:
    """Write via a temp file in the same directory and os.replace, so a crash never leaves a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def save_array(path: Path, array: np.ndarray) -> None:
    _atomic_write(path, lambda f: np.save(f, array))


def save_json(path: Path, obj: dict) -> None:
    _atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def stratified_split(y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, take): `take` holds round(fraction * n_c) examples of each class c. Both come back in a
    random order, so that the first n of a split (load_split's `n`) are a class-balanced sample even when the
    source is sorted by class (Tiny-ImageNet's train)."""
    take = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        take.append(rng.permutation(idx)[: int(np.floor(fraction * len(idx) + 0.5))])
    take_mask = np.zeros(len(y), bool)
    take_mask[np.concatenate(take)] = True
    return rng.permutation(np.flatnonzero(~take_mask)), rng.permutation(np.flatnonzero(take_mask))


def load_meta(data_dir: str | os.PathLike) -> dict:
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: prepare the dataset first (scripts/fetch_data.py)")
    return _read_prepared(path, lambda p: json.loads(p.read_text()))


def _read_prepared(path: Path, read):
    """`read(path)` of one prepared file; a damaged one is named, with the way to prepare it again."""
    try:
        return read(path)
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError) as error:  # json and numpy report torn files as ValueError or OSError
        raise ValueError(f"{path}: damaged prepared data ({error}): delete {path.parent} and re-run to prepare it again") from error


class ArraySplit:
    """A whole split in memory as uint8 (a quarter of float32's size); batches become float in [0,1] on the fly."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, pixel_max: int, augmentation: Augmentation | None = None):
        if x.dtype != torch.uint8 or y.dtype != torch.int64 or x.ndim != 4 or len(x) != len(y):
            raise ValueError(
                f"expected uint8 N×C×H×W x and int64 N y, got {x.dtype} {tuple(x.shape)}, {y.dtype} {tuple(y.shape)}"
            )
        self.x = x.contiguous()
        self.y = y
        self.pixel_max = int(pixel_max)
        self.augmentation = augmentation  # applied to batches(augment=True): training batches only

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device) -> ArraySplit:
        return ArraySplit(self.x.to(device), self.y.to(device), self.pixel_max, self.augmentation)

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(self.pixel_max)

    def float_x(self) -> torch.Tensor:
        return self._scale(self.x)

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        augment: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """`augment`: pass each batch through the split's augmentation (if it has one), drawing from `generator`."""
        augmentation = self.augmentation if augment else None
        n = len(self)
        # randperm on the generator's device (CPU unless given a CUDA one), then indices move to the data
        order = None
        if shuffle:
            order = torch.randperm(n, generator=generator, device=generator.device if generator is not None else "cpu")
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            if order is None:
                xb, yb = self.x[start : start + batch_size], self.y[start : start + batch_size]
            else:
                idx = order[start : start + batch_size].to(self.x.device)
                xb, yb = self.x[idx], self.y[idx]
            if augmentation is not None:
                xb = augmentation(xb, generator)
            yield self._scale(xb), yb


def load_split(data_dir: str | os.PathLike, split: str, device="cpu", n: int | None = None, augmentation: Augmentation | None = None) -> ArraySplit:
    """The prepared `split` (train/val/test), or its first `n` examples, on `device`; `augmentation` is what its
    training batches get (ArraySplit.batches(augment=True))."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    meta = load_meta(data_dir)
    # mmap, then copy only the rows asked for: a few examples of a big dataset load instantly
    x, y = (_read_prepared(Path(data_dir) / f"{split}_{xy}.npy", lambda p: np.load(p, mmap_mode="r")[:n]) for xy in "xy")
    return ArraySplit(torch.from_numpy(np.array(x)), torch.from_numpy(np.array(y)), meta["pixel_max"], augmentation).to(device)
