"""Provenance carried by every result record: code version, config, packages, seed, device."""

from __future__ import annotations

import hashlib
import json
import platform
import socket
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = ("advprune", "torch", "torchvision", "torchattacks", "numpy", "snakemake", "scikit-learn")
_REPO = Path(__file__).resolve().parent.parent


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def git_state(repo: Path = _REPO) -> dict:
    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"git_sha": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.CalledProcessError):
        return {"git_sha": None, "git_dirty": None}


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_info(device: torch.device) -> dict:
    info = {"device": str(device), "host": socket.gethostname(), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def provenance(config: dict, seed: int, device: torch.device, code_hash: str | None = None) -> dict:
    """`config`: the settings this job ran with (its Snakemake params, so the hash covers what it depends on)."""
    return {
        **git_state(),
        "config_hash": config_hash(config),
        "code_hash": code_hash,
        "packages": package_versions(),
        "seed": seed,
        **device_info(device),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
