import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from advprune.data import load_split
from advprune.models import build_model
from advprune.pruning import PruneContext

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


# Pretraining settings of the method tests' contexts: a cheap PGD-AT whose attack the methods reuse.
PRETRAIN = {"objective": "pgd_at", "batch_size": 128, "attack": {"steps": 2, "step_size": 0.05, "random_start": True}, "trades_beta": 6.0, "mart_beta": 5.0}


def small_model(arch="small_cnn"):
    """A width-4 model for the 8x8 digits, with the same initial weights on every call."""
    torch.manual_seed(0)
    return build_model(arch, 10, 1, (8, 8), width=4)


def prune_context(digits_dir, n_train=256, **kwargs):
    """A PruneContext on digits subsets (n_train training, 64 validation images), Linf eps 0.1, PRETRAIN."""
    return PruneContext(train=load_split(digits_dir, "train", n=n_train), val=load_split(digits_dir, "val", n=64),
                        threat_model={"norm": "Linf", "eps": 0.1}, objective=PRETRAIN, **kwargs)


def load_script(name: str):
    """scripts/<name>.py as a module (its __main__ block does not run), to call its main() or cli() in-process."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def env_with_repo():
    env = dict(os.environ)
    env.pop("CI", None)
    return env


def copy_repo(dest: Path) -> Path:
    """A private copy of the repository (tracked and unignored files): its own results/, logs/, .snakemake/,
    and code that a test may edit."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def planned(run) -> dict[str, int]:
    """Rule -> job count from a dry run's 'Job stats' table ({} when there is nothing to do)."""
    text = run.stdout + run.stderr
    if "Job stats" not in text:
        assert "Nothing to be done" in text, text[-2000:]
        return {}
    table = text.split("Job stats:")[1].split("\n\n")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}
