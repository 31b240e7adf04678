"""advprune.data: readers of the real raw formats (tiny files written here), splits, the prepared format, loading."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from advprune.data import DATASETS, ArraySplit, cifar, load_meta, load_split, mnist, prepare_dataset, synthetic
from advprune.data.mnist import read_idx

REPO = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(1234)


def rand_images(n, c, h, w):
    return RNG.integers(0, 256, (n, c, h, w), dtype=np.uint8)


def class_counts(y, n_classes):
    return np.bincount(y, minlength=n_classes)


def expected_take(counts, fraction):
    return np.floor(fraction * counts + 0.5).astype(int)


def check_prepared(out, name, train, test, val_fraction, class_names):
    """Everything a reader + prepare_dataset must get right, given the raw (train, test) written to disk."""
    spec = DATASETS[name]
    meta = load_meta(out)
    (tx, ty), (sx, sy) = train, test
    assert meta["name"] == name and meta["n_classes"] == spec.n_classes and meta["channels"] == spec.channels
    assert meta["image_size"] == list(spec.image_size) and meta["pixel_max"] == 255
    assert meta["class_names"] == class_names and meta["val_fraction"] == val_fraction and meta["split_seed"] == 0
    assert meta["source"] == spec.source
    arrays = {f: np.load(out / f) for f in meta["files"]}
    assert sorted(arrays) == sorted(f"{s}_{k}.npy" for s in ("train", "val", "test") for k in "xy")
    for fname, digest in meta["files"].items():
        assert hashlib.sha256((out / fname).read_bytes()).hexdigest() == digest
    for split in ("train", "val", "test"):
        x, y = arrays[f"{split}_x.npy"], arrays[f"{split}_y.npy"]
        assert x.dtype == np.uint8 and y.dtype == np.int64
        assert x.shape == (meta["splits"][split], spec.channels, *spec.image_size) and y.shape == (len(x),)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave no temp files

    # the official test split lands unchanged and in order
    np.testing.assert_array_equal(arrays["test_x.npy"], sx)
    np.testing.assert_array_equal(arrays["test_y.npy"], sy)
    # train and val partition the official train split, each image keeping its label (random images are unique)
    raw = {img.tobytes(): int(label) for img, label in zip(tx, ty)}
    seen = [(img.tobytes(), int(label)) for s in ("train", "val") for img, label in
            zip(arrays[f"{s}_x.npy"], arrays[f"{s}_y.npy"])]
    assert len(seen) == len(raw) and dict(seen) == raw
    # val is stratified
    n = spec.n_classes
    counts = class_counts(ty, n)
    np.testing.assert_array_equal(class_counts(arrays["val_y.npy"], n), expected_take(counts, val_fraction))

    split = load_split(out, "val")
    assert isinstance(split, ArraySplit) and split.pixel_max == 255
    assert torch.equal(split.x, torch.from_numpy(arrays["val_x.npy"]))
    assert torch.equal(split.y, torch.from_numpy(arrays["val_y.npy"]))
    return arrays


def prepare_twice(raw, tmp_path, name, val_fraction):
    """Prepare with seed 0 twice (must agree byte for byte) and with seed 1 (val must differ)."""
    metas = [prepare_dataset(name, raw, tmp_path / f"out{i}", val_fraction, seed, download=False)
             for i, seed in enumerate((0, 0, 1))]
    assert metas[0]["files"] == metas[1]["files"]
    assert metas[0]["files"]["val_x.npy"] != metas[2]["files"]["val_x.npy"]
    return tmp_path / "out0"


# ---------------------------------------------------------------- MNIST


def write_mnist(raw: Path, compress=True):
    train = rand_images(40, 1, 28, 28), np.repeat([3, 1, 4, 7], 10)
    test = rand_images(12, 1, 28, 28), np.arange(12) % 10
    synthetic.write_mnist(raw, train, test, compress)
    return train, test


@pytest.mark.parametrize("compress", [True, False])
def test_mnist(tmp_path, compress):
    train, test = write_mnist(tmp_path / "raw", compress)
    out = prepare_twice(tmp_path / "raw", tmp_path, "mnist", 0.25)
    arrays = check_prepared(out, "mnist", train, test, 0.25, [str(d) for d in range(10)])
    assert len(arrays["val_y.npy"]) == 12 and len(arrays["train_y.npy"]) == 28


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(bytes([0, 0, 0x0D, 1]) + np.array([2], ">i4").tobytes() + bytes(8))  # float32 idx
    with pytest.raises(ValueError, match="not a uint8 idx"):
        read_idx(bad)
    bad.write_bytes(bytes([0, 0, 0x08, 2]) + np.array([2, 3], ">i4").tobytes() + bytes(5))  # truncated
    with pytest.raises(ValueError, match="holds 5 values"):
        read_idx(bad)


# ---------------------------------------------------------------- CIFAR


def write_cifar10(raw: Path):
    train = rand_images(40, 3, 32, 32), np.tile([0, 2, 5, 9], 10)
    test = rand_images(10, 3, 32, 32), np.arange(10)
    names = [f"class{i}" for i in range(10)]
    synthetic.write_cifar10(raw, train, test, names)
    return train, test, names


def test_cifar10(tmp_path):
    train, test, names = write_cifar10(tmp_path / "raw")
    out = prepare_twice(tmp_path / "raw", tmp_path, "cifar10", 0.2)
    check_prepared(out, "cifar10", train, test, 0.2, names)


def test_cifar100_uses_fine_labels(tmp_path):
    train = rand_images(30, 3, 32, 32), np.repeat([11, 42, 99], 10)
    test = rand_images(6, 3, 32, 32), np.array([11, 42, 99, 0, 1, 2])
    names = [f"fine{i}" for i in range(100)]
    synthetic.write_cifar100(tmp_path / "raw", train, test, names)
    out = prepare_twice(tmp_path / "raw", tmp_path, "cifar100", 0.3)
    check_prepared(out, "cifar100", train, test, 0.3, names)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def cifar10_archive(tmp_path) -> tuple[Path, tuple]:
    """cifar-10-python.tar.gz as published: the cifar-10-batches-py folder at the archive's top level."""
    train, test, _ = write_cifar10(tmp_path / "src")
    archive = tmp_path / "serve" / "cifar-10-python.tar.gz"
    archive.parent.mkdir(exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive, (train, test)


def test_archive_in_raw_dir_is_verified_and_extracted_offline(tmp_path, monkeypatch):
    archive, (train, test) = cifar10_archive(tmp_path)
    raw = tmp_path / "raw"
    raw.mkdir()
    os.replace(archive, raw / archive.name)
    # not the published archive: refused, with the way to get the real one
    with pytest.raises(FileNotFoundError, match="data_batch_1.*cifar-10-python.tar.gz"):
        prepare_dataset("cifar10", raw, tmp_path / "out", download=False)
    monkeypatch.setattr(cifar, "CIFAR10_MD5", md5(raw / archive.name))
    prepare_dataset("cifar10", raw, tmp_path / "out", download=False)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "test_x.npy"), test[0])


@pytest.fixture
def http_dir(tmp_path):
    """Serve tmp_path/serve over HTTP on localhost, standing in for the dataset hosts."""
    root = tmp_path / "serve"
    root.mkdir(exist_ok=True)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=root))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_archive(tmp_path, monkeypatch, http_dir):
    archive, (train, test) = cifar10_archive(tmp_path)
    _, url = http_dir
    monkeypatch.setattr(cifar, "CIFAR10_URL", url + archive.name)
    monkeypatch.setattr(cifar, "CIFAR10_MD5", md5(archive))
    prepare_dataset("cifar10", tmp_path / "raw", tmp_path / "out", 0.2, download=True)
    assert md5(tmp_path / "raw" / archive.name) == md5(archive)
    check_prepared(tmp_path / "out", "cifar10", train, test, 0.2, [f"class{i}" for i in range(10)])


def test_download_files_falls_back_to_next_mirror_and_checks_md5(tmp_path, monkeypatch, http_dir):
    root, url = http_dir
    train, test = write_mnist(root / "mnist")
    resources = [(f, md5(root / "mnist" / f)) for f, _ in mnist.RESOURCES]
    monkeypatch.setattr(mnist, "MIRRORS", [url + "nowhere/", url + "mnist/"])  # the first answers 404
    monkeypatch.setattr(mnist, "RESOURCES", resources)
    prepare_dataset("mnist", tmp_path / "raw", tmp_path / "out", 0.25, download=True)
    check_prepared(tmp_path / "out", "mnist", train, test, 0.25, [str(d) for d in range(10)])

    monkeypatch.setattr(mnist, "RESOURCES", [(f, "0" * 32) for f, _ in resources])  # corrupted download
    with pytest.raises(RuntimeError, match="could not download train-images-idx3-ubyte.gz"):
        prepare_dataset("mnist", tmp_path / "raw2", tmp_path / "out2", download=True)


# ---------------------------------------------------------------- SVHN


def write_svhn(raw: Path, size=32):
    train, test = [(rand_images(n, 3, size, size), np.arange(n) % 3) for n in (30, 8)]  # digits 0, 1, 2
    synthetic.write_svhn(raw, train, test)
    return train, test


def test_svhn(tmp_path):
    train, test = write_svhn(tmp_path / "raw")
    out = prepare_twice(tmp_path / "raw", tmp_path, "svhn", 0.2)
    arrays = check_prepared(out, "svhn", train, test, 0.2, [str(d) for d in range(10)])
    assert set(np.unique(arrays["train_y.npy"])) == {0, 1, 2}


def test_wrong_image_size_is_rejected(tmp_path):
    write_svhn(tmp_path / "raw", size=28)
    with pytest.raises(ValueError, match="svhn train: expected uint8 x of shape"):
        prepare_dataset("svhn", tmp_path / "raw", tmp_path / "out", download=False)


# ---------------------------------------------------------------- Tiny-ImageNet


def test_tinyimagenet(tmp_path):
    wnids = synthetic.tinyimagenet_wnids()
    labels = [5, 0, 199]
    train_images = [RNG.integers(0, 256, (64, 64) if (k, j) == (1, 3) else (64, 64, 3), dtype=np.uint8)  # one grayscale
                    for k in range(3) for j in range(8)]
    train_y = np.repeat(labels, 8)
    test_images = [RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(6)]
    test_y = np.array([199, 5, 0, 5, 199, 0])
    train, test = synthetic.write_tinyimagenet(tmp_path / "raw", (train_images, train_y), (test_images, test_y), wnids,
                                               [f"thing{i}" for i in range(200)])

    out = prepare_twice(tmp_path / "raw", tmp_path, "tinyimagenet", 0.25)
    check_prepared(out, "tinyimagenet", train, test, 0.25, [f"thing{i}" for i in range(200)])
    gray = train[0][list(train[1]).index(0) + 3]  # label 0's fourth image, stored grayscale
    assert (gray[0] == gray[1]).all() and (gray[1] == gray[2]).all()


# ---------------------------------------------------------------- missing files


@pytest.mark.parametrize("name, missing", [
    ("mnist", "train-images-idx3-ubyte.gz"),
    ("cifar10", "data_batch_1"),
    ("cifar100", "cifar-100-python/train"),
    ("svhn", "train_32x32.mat"),
    ("tinyimagenet", "wnids.txt"),
])
def test_missing_raw_file_without_download(tmp_path, name, missing):
    out = tmp_path / "out"
    out.mkdir()
    (out / "meta.json").write_text("{}")  # from an earlier run: must not survive a failed one
    with pytest.raises(FileNotFoundError, match=rf"{missing} not found: .*download.* into "):
        prepare_dataset(name, tmp_path / "raw", out, download=False)
    assert not (out / "meta.json").exists()


def test_missing_second_file_is_named(tmp_path):
    write_svhn(tmp_path / "raw")
    (tmp_path / "raw" / "test_32x32.mat").unlink()
    with pytest.raises(FileNotFoundError, match="test_32x32.mat not found.*ufldl.stanford.edu"):
        prepare_dataset("svhn", tmp_path / "raw", tmp_path / "out", download=False)


def test_urls_and_checksums_match_torchvision():
    from torchvision.datasets import CIFAR10, CIFAR100, MNIST, SVHN

    from advprune.data import svhn

    assert mnist.MIRRORS == MNIST.mirrors and mnist.RESOURCES == [tuple(r) for r in MNIST.resources]
    assert (cifar.CIFAR10_URL, cifar.CIFAR10_MD5) == (CIFAR10.url, CIFAR10.tgz_md5)
    assert (cifar.CIFAR100_URL, cifar.CIFAR100_MD5) == (CIFAR100.url, CIFAR100.tgz_md5)
    assert svhn.SPLIT_LIST == {k: tuple(SVHN.split_list[k]) for k in ("train", "test")}


# ---------------------------------------------------------------- digits (real data) and loading


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    prepare_dataset("digits", out / "raw", out / "data", 0.15, 0, download=False)
    return out / "data"


def test_digits_splits(digits_dir, tmp_path):
    meta = load_meta(digits_dir)
    assert meta["pixel_max"] == 16 and meta["channels"] == 1 and meta["image_size"] == [8, 8]
    assert meta["source"] == "sklearn.datasets.load_digits" and meta["class_names"] == [str(d) for d in range(10)]
    assert sum(meta["splits"].values()) == 1797
    d = load_digits()
    parts = {s: load_split(digits_dir, s) for s in ("train", "val", "test")}
    # the three splits partition the dataset: same multiset of (image, label) rows
    def rows(x, y):
        return sorted(map(bytes, np.concatenate([x.reshape(len(x), -1), y[:, None]], 1).astype(np.uint8)))

    got = rows(np.concatenate([p.x.numpy() for p in parts.values()]),
               np.concatenate([p.y.numpy() for p in parts.values()]))
    assert got == rows(d.images.astype(np.uint8), d.target)
    # stratified: test takes 20 % of each class, val 15 % of what is left
    all_counts = class_counts(d.target, 10)
    test_counts = expected_take(all_counts, 0.2)
    np.testing.assert_array_equal(class_counts(parts["test"].y.numpy(), 10), test_counts)
    np.testing.assert_array_equal(class_counts(parts["val"].y.numpy(), 10), expected_take(all_counts - test_counts, 0.15))
    # reproducible from split_seed
    again = prepare_dataset("digits", tmp_path / "raw", tmp_path / "a", 0.15, 0, download=False)
    other = prepare_dataset("digits", tmp_path / "raw", tmp_path / "b", 0.15, 1, download=False)
    assert again["files"] == meta["files"] and other["files"]["test_x.npy"] != meta["files"]["test_x.npy"]


def test_digits_float_x_is_sklearn_scaling(digits_dir):
    d = load_digits()
    index = {img.astype(np.uint8).tobytes(): i for i, img in enumerate(d.images)}
    test = load_split(digits_dir, "test")
    fx = test.float_x()
    assert fx.dtype == torch.float32 and fx.shape == (len(test), 1, 8, 8)
    for k in range(len(test)):
        i = index[test.x[k].numpy().tobytes()]
        assert test.y[k] == d.target[i]
        assert torch.equal(fx[k, 0], torch.from_numpy(d.images[i] / 16).float())


def test_load_split_and_batches(digits_dir):
    full = load_split(digits_dir, "train")
    head = load_split(digits_dir, "train", n=10)
    assert len(head) == 10 and torch.equal(head.x, full.x[:10]) and torch.equal(head.y, full.y[:10])
    assert full.x.is_contiguous() and full.x.dtype == torch.uint8 and full.y.dtype == torch.int64
    assert full.to("cpu").x.device.type == "cpu"

    xs, ys = zip(*full.batches(100))
    assert [len(y) for y in ys] == [100] * 12 + [len(full) - 1200]
    assert torch.equal(torch.cat(xs), full.float_x()) and torch.equal(torch.cat(ys), full.y)
    assert all(x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 for x in xs)
    assert len(list(full.batches(100, drop_last=True))) == 12

    def epoch(seed):
        return list(full.batches(64, shuffle=True, generator=torch.Generator().manual_seed(seed)))

    a, b, c = epoch(0), epoch(0), epoch(1)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1])
    ya = torch.cat([y for _, y in a])
    assert not torch.equal(ya, full.y) and torch.equal(ya.sort().values, full.y.sort().values)
    # shuffled batches keep every image with its own label
    pairs = {(x.mul(16).round().to(torch.uint8).numpy().tobytes(), int(y)) for xb, yb in a for x, y in zip(xb, yb)}
    assert pairs == {(x.numpy().tobytes(), int(y)) for x, y in zip(full.x, full.y)}

    with pytest.raises(ValueError, match="unknown split"):
        load_split(digits_dir, "validation")


# ---------------------------------------------------------------- the entry script


def run_script(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "scripts" / "fetch_data.py"), *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def test_script_cli(tmp_path):
    help_ = run_script("--help")
    assert help_.returncode == 0 and "--no-download" in help_.stdout
    assert all(name in help_.stdout for name in DATASETS)

    done = run_script("--dataset", "digits", "--raw-dir", tmp_path / "raw", "--out-dir", tmp_path / "out",
                      "--val-fraction", 0.2, "--split-seed", 3, "--log", tmp_path / "log" / "fetch.log")
    assert done.returncode == 0, done.stderr
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["val_fraction"] == 0.2 and meta["split_seed"] == 3 and sum(meta["splits"].values()) == 1797
    assert "digits ready" in (tmp_path / "log" / "fetch.log").read_text()
