"""Process-level plumbing shared by every entry script: logging, progress, threads, seeds, devices.

torch and numpy are imported where needed: the report and aggregate jobs use only the logging half.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
log = logging.getLogger("advprune")


def setup_logging(log_path: str | os.PathLike | None = None, level: int = logging.INFO) -> None:
    """Log plain timestamped lines to the job's log file (Snakemake's `log:`) when given, else to stderr
    (a CLI run), so a workflow run's terminal is not flooded by its jobs."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if log_path:
        os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
        handler: logging.Handler = logging.FileHandler(log_path, mode="w")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(fmt)
    root.addHandler(handler)
    logging.captureWarnings(True)
    if log_path:
        _log_uncaught_exceptions()


def _log_uncaught_exceptions() -> None:
    """A job that fails leaves its error and traceback in its own log (where Snakemake, and SLURM users, send
    people to look), not only on the console of whoever started the run."""
    console = sys.__excepthook__

    def hook(kind, error, tb):
        if not issubclass(kind, KeyboardInterrupt):
            log.critical("job failed: %s: %s", kind.__name__, error, exc_info=(kind, error, tb))
        console(kind, error, tb)

    sys.excepthook = hook


def progress(iterable: Iterable[T], desc: str, total: int | None = None, log_every_s: float = 30.0) -> Iterator[T]:
    """tqdm on a terminal; on a batch system (no TTY) a plain log line every `log_every_s` seconds instead,
    so SLURM logs show progress without being flooded by carriage returns."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if sys.stderr.isatty():
        yield from tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)
        return
    last = time.monotonic()
    for i, item in enumerate(iterable, 1):
        yield item
        now = time.monotonic()
        if now - last >= log_every_s:
            log.info("%s: %d/%s", desc, i, total if total is not None else "?")
            last = now


def configure_torch(threads: int | None = None, deterministic: bool = True) -> None:
    """Pin the thread count (a job must not use more cores than Snakemake gave it) and make kernels
    deterministic, so the same seed gives the same numbers."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    # fp32 means fp32 (cuDNN convolutions default to TF32 on Ampere and later): evaluation and attacks must not
    # lose precision silently; the training fast path asks for bf16 explicitly (advprune.training.fast).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # What torch.use_deterministic_algorithms does, minus importing torch._inductor to set its flag: that
        # import (torch._dynamo with it) took 1.7 s of every job's start, and nothing here compiles.
        torch._C._set_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(requested: str = "auto"):
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)
