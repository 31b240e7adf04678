"""Tiny-ImageNet (200 classes, 64×64) from the official zip layout. The official test split has no labels, so
the official val split is our test split and our val split is carved from train."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from ..runtime import progress
from .registry import RawData, ensure_archive, register_dataset

log = logging.getLogger(__name__)

URL, MD5 = "http://cs231n.stanford.edu/tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de"
FOLDER = "tiny-imagenet-200"


def read_images(paths: list[Path], desc: str) -> np.ndarray:
    x = np.empty((len(paths), 3, 64, 64), np.uint8)
    for i, path in enumerate(progress(paths, desc)):
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))  # a few hundred of the JPEGs are grayscale
        if rgb.shape != (64, 64, 3):
            raise ValueError(f"{path}: expected a 64×64 image, got {rgb.shape[:2]}")
        x[i] = rgb.transpose(2, 0, 1)
    return x


@register_dataset("tinyimagenet", n_classes=200, channels=3, image_size=(64, 64), pixel_max=255, source=URL)
def read(raw_dir: Path, download: bool) -> RawData:
    ensure_archive(raw_dir, [f"{FOLDER}/{f}" for f in ("wnids.txt", "words.txt", "val/val_annotations.txt")],
                   URL, MD5, download)
    base = raw_dir / FOLDER
    wnids = sorted((base / "wnids.txt").read_text().split())  # sorted, as ImageFolder-style loaders number them
    label = {wnid: i for i, wnid in enumerate(wnids)}
    words = dict(line.split("\t", 1) for line in (base / "words.txt").read_text().splitlines() if "\t" in line)
    names = [words.get(wnid, wnid).split(",")[0].strip() for wnid in wnids]

    train_paths = sorted(base.glob("train/*/images/*.JPEG"))
    if not train_paths:
        raise FileNotFoundError(f"no images under {base}/train/<wnid>/images/: is the archive fully extracted?")
    unknown = {p.parts[-3] for p in train_paths} - label.keys()
    if unknown:
        raise ValueError(f"train folders not listed in wnids.txt: {sorted(unknown)[:5]}")
    train_y = np.array([label[p.parts[-3]] for p in train_paths], np.int64)

    # val_annotations.txt: "<file>\t<wnid>\t<bounding box>" per line
    annotations = [line.split("\t")[:2] for line in (base / "val/val_annotations.txt").read_text().splitlines() if line]
    test_y = np.array([label[wnid] for _, wnid in annotations], np.int64)
    log.info("parsing %d train and %d val JPEGs from %s", len(train_paths), len(annotations), base)
    train_x = read_images(train_paths, "tinyimagenet train")
    test_x = read_images([base / "val/images" / f for f, _ in annotations], "tinyimagenet val")
    return RawData((train_x, train_y), (test_x, test_y), names)
