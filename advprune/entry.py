"""What every entry script in scripts/ shares: the CLI skeleton and per-job process setup."""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

from advprune.runtime import configure_torch, pick_device, setup_logging


def start_job(log: str | None, threads: int | None, device: str = "auto"):
    """Logging to the job's log file, the job's thread budget, deterministic kernels; returns the device."""
    setup_logging(log)
    configure_torch(threads)
    return pick_device(device)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", default="config/config.yaml", help="run configuration (validated)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    p.add_argument("--log", default=None, help="also write the log to this file")
    return p


def add_training_outputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out-model", required=True, help="checkpoint to write")
    p.add_argument("--out-curve", required=True, help="per-epoch training curve (CSV)")
    p.add_argument("--resume", required=True, help="resume state file, kept outside the outputs")


def load_config(path: str) -> dict:
    from advprune.config import load_config as load

    return load(path)


def write_csv(rows: list[dict], path: str | os.PathLike, extra: dict | None = None, header: list[str] | None = None) -> None:
    """Rows as CSV (atomic); `extra` columns (e.g. identifying wildcards) are prepended to every row. Columns:
    `header` first, then any other key in order of first appearance (rows may differ, e.g. per-method curves)."""
    from advprune.checkpoint import atomic_write

    rows = [{**(extra or {}), **row} for row in rows]
    fields = list(dict.fromkeys([*(header or []), *(extra or {}), *(k for row in rows for k in row)]))

    def write(tmp):
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, restval="")
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def remove_resume_state(path: str | os.PathLike) -> None:
    """Once the declared outputs are written, the resume state has served its purpose."""
    Path(path).unlink(missing_ok=True)
