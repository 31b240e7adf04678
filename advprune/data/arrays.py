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


class PreparedDataError(ValueError):
    """A prepared file that is damaged or not what meta.json says it is: its path, what is wrong, and the remedy."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}: delete {path.parent} and re-run to prepare it again")


def _read_prepared(path: Path, read):
    """`read(path)` of one prepared file; a damaged one is named, with the way to prepare it again."""
    try:
        return read(path)
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError) as error:  # json and numpy report torn files as ValueError or OSError
        raise PreparedDataError(path, f"damaged prepared data ({error})") from error


def data_sha256(meta: dict) -> str | None:
    """The identity of a prepared dataset: one hash over the sha256 of its six files (meta.json's `files`), which
    changes with any split (val_fraction, split_seed) or content. None for a meta without them."""
    files = meta.get("files")
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest() if files else None


def _verified(path: Path, meta: dict) -> np.ndarray:
    """The array at `path` (memory-mapped) once its sha256 is the one meta.json records: a file replaced after
    preparation (another split's copy, edited labels) is refused, not used as what its name says."""
    recorded = meta.get("files", {}).get(path.name)
    if recorded is None:
        raise PreparedDataError(path, "meta.json records no sha256 for it")
    array = _read_prepared(path, lambda p: np.load(p, mmap_mode="r"))  # first: a torn file is named as damaged
    found = sha256(path)
    if found != recorded:
        raise PreparedDataError(path, f"its sha256 {found[:12]} is not the one meta.json records ({recorded[:12]}): "
                                      "the file changed after preparation")
    return array


def _dims(shape) -> str:
    return "×".join(map(str, shape))


def _check_split(data_dir: Path, split: str, meta: dict, x: np.ndarray, y: np.ndarray) -> None:
    """Shapes, dtypes and labels of a whole split against meta.json, so that a file whose hash was recorded
    with it (or a meta.json edited to match) still cannot put labels outside the classes or images of
    another shape into a job."""
    x_path, y_path = data_dir / f"{split}_x.npy", data_dir / f"{split}_y.npy"
    want = (int(meta["channels"]), *map(int, meta["image_size"]))
    if x.dtype != np.uint8:
        raise PreparedDataError(x_path, f"images of dtype {x.dtype}, expected uint8")
    if x.ndim != 4 or x.shape[1:] != want:
        raise PreparedDataError(x_path, f"images of shape {_dims(x.shape)}, expected N×{_dims(want)} (meta.json: channels, image_size)")
    if len(x) != meta["splits"][split]:
        raise PreparedDataError(x_path, f"{len(x)} examples, meta.json says {meta['splits'][split]}")
    if x.max(initial=0) > meta["pixel_max"]:
        raise PreparedDataError(x_path, f"pixel values up to {x.max()}, above meta.json's pixel_max {meta['pixel_max']}")
    if not np.issubdtype(y.dtype, np.integer):
        raise PreparedDataError(y_path, f"labels of dtype {y.dtype}, expected integers")
    if y.shape != (len(x),):
        raise PreparedDataError(y_path, f"{len(y)} labels for {len(x)} images" if y.ndim == 1 else f"labels of shape {_dims(y.shape)}, expected one per image")
    outside = np.unique(y[(y < 0) | (y >= meta["n_classes"])])
    if len(outside):
        raise PreparedDataError(y_path, f"labels outside [0, {meta['n_classes']}): {', '.join(map(str, outside[:3]))}")


class ArraySplit:
    """A whole split in memory as uint8 (a quarter of float32's size); batches become float in [0,1] on the fly."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, pixel_max: int, augmentation: Augmentation | None = None, sha256: str | None = None):
        if x.dtype != torch.uint8 or y.dtype != torch.int64 or x.ndim != 4 or len(x) != len(y):
            raise ValueError(
                f"expected uint8 N×C×H×W x and int64 N y, got {x.dtype} {tuple(x.shape)}, {y.dtype} {tuple(y.shape)}"
            )
        self.x = x.contiguous()
        self.y = y
        self.pixel_max = int(pixel_max)
        self.augmentation = augmentation  # applied to batches(augment=True): training batches only
        self.sha256 = sha256  # what was loaded (load_split): training's resume fingerprint covers it

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device) -> ArraySplit:
        return ArraySplit(self.x.to(device), self.y.to(device), self.pixel_max, self.augmentation, self.sha256)

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
    """The prepared `split` (train/val/test), or its first `n` examples (all of them when it has fewer), on
    `device`; `augmentation` is what its training batches get (ArraySplit.batches(augment=True)).

    Both files are checked against the sha256 meta.json records (each read once: ~0.4 s for CIFAR-10's
    150 MB of training images), then shapes and labels against meta.json (PreparedDataError names the file).
    The split's `sha256` identifies exactly the examples loaded (its files' hashes and the count)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    data_dir = Path(data_dir)
    meta = load_meta(data_dir)
    x, y = (_verified(data_dir / f"{split}_{xy}.npy", meta) for xy in "xy")
    _check_split(data_dir, split, meta, x, y)
    # mmap, then copy only the rows asked for: a few examples of a big dataset load instantly
    x, y = np.array(x[:n]), np.array(y[:n], dtype=np.int64)
    identity = hashlib.sha256(f"{meta['files'][f'{split}_x.npy']} {meta['files'][f'{split}_y.npy']} {len(y)}".encode()).hexdigest()
    return ArraySplit(torch.from_numpy(x), torch.from_numpy(y), meta["pixel_max"], augmentation, identity).to(device)
