import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


@pytest.fixture(autouse=True)
def _one_thread():
    # One thread: tests also run Snakemake jobs beside them, and oversubscribed cores slow torch tenfold.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """The embedded dataset prepared once per session (real sklearn digits)."""
    from advprune.data import prepare_dataset

    out = tmp_path_factory.mktemp("data") / "digits"
    prepare_dataset("digits", str(out.parent / "raw"), str(out))
    return str(out)


def env_with_repo():
    env = dict(os.environ)
    env.pop("CI", None)
    return env
