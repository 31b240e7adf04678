"""Damaged files and failed jobs: every failure names its file and cause, and the job's own log has it."""

import subprocess

import pytest
import torch

from advprune.checkpoint import CheckpointError, load_model, save_model
from advprune.models import build_model

from conftest import PYTHON, REPO, env_with_repo

META = {"n_classes": 10, "channels": 1, "image_size": [8, 8]}


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_model(path, build_model("small_cnn", 10, 1, (8, 8), width=4), "small_cnn", {"width": 4}, META)
    return path.read_bytes()


DAMAGE = [
    ("half", lambda b: b[: len(b) // 2], "truncated or corrupt checkpoint"),
    ("tail cut", lambda b: b[:-10], "truncated or corrupt checkpoint"),
    ("empty", lambda b: b"", "empty file, not a checkpoint"),
    ("text", lambda b: b"epochs: 10\n", "not a torch checkpoint"),
]


@pytest.mark.parametrize("name,damage,message", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_a_damaged_checkpoint_is_named_with_what_is_wrong(tmp_path, checkpoint_bytes, name, damage, message):
    path = tmp_path / "model.pt"
    path.write_bytes(damage(checkpoint_bytes))
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    assert str(error.value).startswith(f"{path}: {message}") and "\n" not in str(error.value)


def test_a_tensor_file_is_not_taken_for_a_model(tmp_path):
    torch.save(torch.ones(3), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match="not a model checkpoint of this project"):
        load_model(tmp_path / "tensor.pt")


def test_a_failed_job_leaves_its_error_and_traceback_in_its_log(tmp_path, checkpoint_bytes):
    (tmp_path / "model.pt").write_bytes(checkpoint_bytes[: len(checkpoint_bytes) // 2])
    run = subprocess.run([PYTHON, str(REPO / "scripts/sensitivity.py"), "--config", str(REPO / ".test/config.yaml"), "--dataset", "digits",
                          "--model", "model.pt", "--out", "s.csv", "--log", "job.log"], cwd=tmp_path, capture_output=True, text=True, env=env_with_repo())
    assert run.returncode != 0
    log = (tmp_path / "job.log").read_text()
    assert "job failed: CheckpointError: model.pt: truncated or corrupt checkpoint" in log
    assert "Traceback (most recent call last)" in log and "load_model" in log
    assert "model.pt: truncated or corrupt checkpoint" in run.stderr  # the console still shows it


@pytest.mark.parametrize("name", ["train_x.npy", "meta.json"])
def test_damaged_prepared_data_is_named(tmp_path, digits_dir, name):
    import shutil

    from advprune.data import load_split

    data = shutil.copytree(digits_dir, tmp_path / "digits")
    (data / name).write_bytes((data / name).read_bytes()[:40])
    with pytest.raises(ValueError, match=f"^{data / name}: damaged prepared data .*delete {data} and re-run"):
        load_split(data, "train")
