"""Raw dataset files in each dataset's official on-disk format, filled with given (or random) images: what the
readers in this package parse, byte for byte the layout the published archives extract to. Used by the tests
of the readers and by the rehearsal (advprune/rehearsal.py), which runs a paper configuration on such files.

Every writer takes the images as uint8 N×C×H×W and the labels as int N, and writes them the way the official
files store them (CIFAR: python-2 pickles of R, G, B planes; SVHN: .mat, H×W×C×N with the digit 0 as 10;
MNIST: big-endian idx, gzipped; Tiny-ImageNet: one JPEG per image in the wnid folders, val annotations)."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

from .tinyimagenet import FOLDER as TINYIMAGENET_FOLDER

Split = tuple[np.ndarray, np.ndarray]


def random_images(rng: np.random.Generator, n: int, c: int, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (n, c, h, w), dtype=np.uint8)


# ---------------------------------------------------------------- MNIST (idx)

MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    """idx: magic (0, 0, 0x08 = uint8, ndim), the sizes as big-endian int32, then the values."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">i4").tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_mnist(raw: Path, train: Split, test: Split, compress: bool = True) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for split, (x, y) in (("train", train), ("test", test)):
        images, labels = MNIST_FILES[split]
        write_idx(raw / f"{images}{suffix}", x[:, 0], compress)
        write_idx(raw / f"{labels}{suffix}", y, compress)


# ---------------------------------------------------------------- CIFAR (python pickles)


def cifar_rows(x_chw: np.ndarray) -> np.ndarray:
    """CIFAR's row layout, built from HWC images independently of the reader: all R, then all G, then all B."""
    hwc = x_chw.transpose(0, 2, 3, 1)
    return np.concatenate([hwc[..., c].reshape(len(hwc), -1) for c in range(3)], axis=1)


def _dump(path: Path, obj) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_cifar10(raw: Path, train: Split, test: Split, names: list[str]) -> None:
    """cifar-10-batches-py: the train split in five data_batch_i files, test_batch, batches.meta."""
    base = raw / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    parts = np.array_split(np.arange(len(train[1])), 5)
    for i, idx in enumerate(parts):
        _dump(base / f"data_batch_{i + 1}", {b"batch_label": f"training batch {i + 1} of 5".encode(), b"labels": train[1][idx].tolist(),
                                              b"data": cifar_rows(train[0][idx])})
    _dump(base / "test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": test[1].tolist(), b"data": cifar_rows(test[0])})
    _dump(base / "batches.meta", {b"label_names": [n.encode() for n in names], b"num_cases_per_batch": 10000, b"num_vis": 3072})


def write_cifar100(raw: Path, train: Split, test: Split, names: list[str]) -> None:
    """cifar-100-python: train, test (fine and coarse labels) and meta."""
    base = raw / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    for fname, (x, y) in (("train", train), ("test", test)):
        _dump(base / fname, {b"fine_labels": list(map(int, y)), b"coarse_labels": [int(v) // 5 for v in y], b"data": cifar_rows(x)})
    _dump(base / "meta", {b"fine_label_names": [n.encode() for n in names], b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})


# ---------------------------------------------------------------- SVHN (.mat)


def write_svhn(raw: Path, train: Split, test: Split) -> None:
    import scipy.io

    raw.mkdir(parents=True, exist_ok=True)
    for fname, (x, y) in (("train_32x32.mat", train), ("test_32x32.mat", test)):
        stored = np.where(y == 0, 10, y).astype(np.uint8)[:, None]  # SVHN writes the digit 0 as 10
        scipy.io.savemat(raw / fname, {"X": x.transpose(2, 3, 1, 0), "y": stored})


# ---------------------------------------------------------------- Tiny-ImageNet (JPEG folders)


def save_jpeg(path: Path, rgb_or_gray: np.ndarray) -> np.ndarray:
    """Write a JPEG (H×W×3 or H×W) and return what decoding it to RGB gives, C×H×W (JPEG is lossy)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb_or_gray).save(path, quality=90)
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).transpose(2, 0, 1)


def tinyimagenet_wnids(n: int = 200) -> list[str]:
    return [f"n{i:08d}" for i in range(n)]


def write_tinyimagenet(raw: Path, train: Split, test: Split, wnids: list[str], names: list[str]) -> tuple[Split, Split]:
    """tiny-imagenet-200: wnids.txt (unsorted, as published), words.txt, train/<wnid>/images/*.JPEG with a boxes
    file, val/images + val_annotations.txt, an unlabelled test/ folder. Images as PIL takes them (H×W×3, or H×W
    for the few grayscale ones). Returns (train, test) as the reader gives them back: decoded to RGB C×H×W
    (JPEG is lossy), train in the reader's order (sorted by path)."""
    base = raw / TINYIMAGENET_FOLDER
    base.mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")
    (base / "words.txt").write_text("n99999999\tunrelated\n" + "".join(f"{w}\t{name}, alias\n" for w, name in zip(wnids, names)))
    decoded, paths, counts = [], [], {}
    for img, label in zip(*train):
        wnid = wnids[int(label)]
        j = counts[wnid] = counts.get(wnid, -1) + 1
        paths.append(base / "train" / wnid / "images" / f"{wnid}_{j}.JPEG")
        decoded.append(save_jpeg(paths[-1], img))
        (base / "train" / wnid / f"{wnid}_boxes.txt").touch()
    decoded_test, lines = [], []
    for j, (img, label) in enumerate(zip(*test)):
        decoded_test.append(save_jpeg(base / "val" / "images" / f"val_{j}.JPEG", img))
        lines.append(f"val_{j}.JPEG\t{wnids[int(label)]}\t0\t0\t63\t63\n")
    (base / "val" / "val_annotations.txt").write_text("".join(lines))
    (base / "test" / "images").mkdir(parents=True, exist_ok=True)  # unlabelled, unused
    order = sorted(range(len(paths)), key=paths.__getitem__)
    return (np.stack(decoded)[order], np.asarray(train[1])[order]), (np.stack(decoded_test), np.asarray(test[1]))


# ---------------------------------------------------------------- a whole dataset


def write_dataset(name: str, raw: Path, classes: list[int], n_train_per_class: int, n_test: int, seed: int = 0) -> None:
    """Random images of dataset `name` in its official files under `raw` (its raw_dir): `n_train_per_class`
    training images of each label in `classes`, `n_test` test images cycling through them. The number of
    classes the network is built with is the dataset's own (DatasetSpec.n_classes), whichever labels occur."""
    from .registry import DATASETS

    spec = DATASETS[name]
    rng = np.random.default_rng(seed)
    train_y = np.repeat(np.asarray(classes, np.int64), n_train_per_class)
    test_y = np.resize(np.asarray(classes, np.int64), n_test)
    train = random_images(rng, len(train_y), spec.channels, *spec.image_size), train_y
    test = random_images(rng, len(test_y), spec.channels, *spec.image_size), test_y
    if name == "mnist":
        write_mnist(raw, train, test)
    elif name == "cifar10":
        write_cifar10(raw, train, test, [f"class{i}" for i in range(10)])
    elif name == "cifar100":
        write_cifar100(raw, train, test, [f"fine{i}" for i in range(100)])
    elif name == "svhn":
        write_svhn(raw, train, test)
    elif name == "tinyimagenet":
        wnids = tinyimagenet_wnids(spec.n_classes)
        def hwc(split):
            return split[0].transpose(0, 2, 3, 1), split[1]

        write_tinyimagenet(raw, hwc(train), hwc(test), wnids, [f"thing{i}" for i in range(spec.n_classes)])
    elif name != "digits":  # the embedded dataset has no raw files
        raise ValueError(f"no writer for dataset {name!r}")
