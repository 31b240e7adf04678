"""Checkpoints: written atomically (temp file + fsync + rename, so a kill never leaves a torn file) and read
with `weights_only=True` (no pickled code is executed on load).

A model checkpoint holds everything to rebuild the network without the config:
{"format", "arch", "model_options", "n_classes", "in_channels", "image_size", "state_dict", "masks", "meta"}.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

FORMAT = 1


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call `write(tmp_path)` then move the finished file into place in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_torch(path: str | os.PathLike, map_location="cpu") -> Any:
    return torch.load(path, map_location=map_location, weights_only=True)


def write_json(obj: Any, path: str | os.PathLike) -> None:
    def write(tmp):
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2)  # insertion order: e.g. attacks in the order they ran
            fh.write("\n")

    atomic_write(path, write)


def save_model(path, model: nn.Module, arch: str, model_options: dict, data_meta: dict, masks: dict | None = None, meta: dict | None = None) -> None:
    save_torch(
        {
            "format": FORMAT,
            "arch": arch,
            "model_options": dict(model_options),
            "n_classes": int(data_meta["n_classes"]),
            "in_channels": int(data_meta["channels"]),
            "image_size": list(data_meta["image_size"]),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "masks": None if masks is None else {k: v.detach().cpu().bool() for k, v in masks.items()},
            "meta": meta or {},
        },
        path,
    )


def load_model(path, device="cpu") -> tuple[nn.Module, dict]:
    """Rebuild the network from a checkpoint; returns (model on `device`, the checkpoint dict)."""
    from advprune.models import build_model

    ckpt = load_torch(path)
    if ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported checkpoint format {ckpt.get('format')!r}")
    model = build_model(ckpt["arch"], ckpt["n_classes"], ckpt["in_channels"], ckpt["image_size"], **ckpt["model_options"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device), ckpt
