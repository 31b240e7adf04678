import signal
import subprocess
import time

import pytest
import torch
import torch.nn.functional as F
import yaml

from advprune.checkpoint import load_torch
from advprune.config import ConfigError, pretrain_params, validate
from advprune.data import ArraySplit, prepare_dataset, synthetic
from advprune.data.augment import Augmentation
from advprune.models import build_model
from advprune.training import TrainSettings, build_objective, train

from conftest import PYTHON, REPO, env_with_repo


def _batch(n=64, c=3, h=6, w=5):
    return torch.randint(1, 256, (n, c, h, w), dtype=torch.uint8)  # no zeros: padding is told apart from pixels


def test_a_crop_is_a_window_of_the_zero_padded_image_and_every_offset_occurs():
    x = _batch(n=400)
    out = Augmentation(crop=2).__call__(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = F.pad(x, (2, 2, 2, 2))
    offsets = set()
    for i in range(len(x)):
        found = [(t, l) for t in range(5) for l in range(5) if torch.equal(out[i], padded[i, :, t : t + 6, l : l + 5])]
        assert found, i
        offsets.add(found[0])
    assert offsets == {(t, l) for t in range(5) for l in range(5)}


def test_a_flip_mirrors_about_half_of_the_images_and_draws_come_from_the_generator():
    x = _batch(n=1000)
    out = Augmentation(flip=True)(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, xi.flip(2)) for o, xi in zip(out, x)])
    assert all(torch.equal(o, xi) or f for o, xi, f in zip(out, x, flipped))
    assert 430 < int(flipped.sum()) < 570
    again = Augmentation(flip=True)(x, torch.Generator().manual_seed(0))
    other = Augmentation(flip=True)(x, torch.Generator().manual_seed(1))
    assert torch.equal(out, again) and not torch.equal(out, other)


def test_only_training_batches_are_augmented():
    split = ArraySplit(_batch(n=32), torch.arange(32) % 10, 255, Augmentation(crop=2, flip=True))
    plain = torch.cat([x for x, _ in split.batches(8)])
    assert torch.equal(plain, split.float_x())  # evaluation batches: the images as they are
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a = torch.cat([x for x, _ in split.batches(8, shuffle=True, generator=g(), augment=True)])
    b = torch.cat([x for x, _ in split.batches(8, shuffle=True, generator=g(), augment=True)])
    unaugmented = torch.cat([x for x, _ in split.batches(8, shuffle=True, generator=g())])
    assert torch.equal(a, b) and not torch.equal(a, unaugmented)


def test_training_applies_the_split_s_augmentation(tmp_path):
    x, y = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8), torch.arange(64) % 10
    weights = {}
    for name, aug in (("plain", None), ("augmented", Augmentation(crop=2, flip=True))):
        torch.manual_seed(0)
        model = build_model("small_cnn", 10, 3, (8, 8), width=2)
        split = ArraySplit(x, y, 255, aug)
        train(model, build_objective("natural", 0.1, {"steps": 1, "step_size": 0.1}), split, split, TrainSettings(epochs=1, batch_size=16, lr=0.1), 0,
              tmp_path / f"{name}.state.pt")
        weights[name] = model.state_dict()
    assert not all(torch.equal(weights["plain"][k], weights["augmented"][k]) for k in weights["plain"])


def test_per_dataset_defaults_and_a_bad_entry_named(tmp_path):
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["data"]["augmentation"] = {"svhn": {"crop": 2, "flip": True}}
    aug = validate(config)["data"]["augmentation"]
    assert aug["cifar10"] == aug["tinyimagenet"] == {"crop": 4, "flip": True}
    assert aug["mnist"] == {"crop": 4, "flip": False} and aug["svhn"] == {"crop": 2, "flip": True}
    assert aug["digits"] == {"crop": 0, "flip": False} and Augmentation.from_params(aug["digits"]) is None  # measured to hurt (README)
    assert pretrain_params(config, "small_cnn", dataset="cifar10")["train"]["augmentation"] == {"crop": 4, "flip": True}
    # the dataset's augmentation is part of its training params: changing cifar10's re-runs only cifar10's jobs
    reset = validate({**config, "data": {**config["data"], "augmentation": {}}})
    assert pretrain_params(config, "small_cnn", dataset="digits") == pretrain_params(reset, "small_cnn", dataset="digits")
    config["data"]["augmentation"] = {"cifar10": {"crop": 4}}
    with pytest.raises(ConfigError, match=r"'data.augmentation.cifar10': 'flip' is a required property"):
        validate(config)


def _cifar_config(tmp_path):
    """The default config on a shrunk CIFAR-10 written in its real on-disk format (pickled batches)."""
    synthetic.write_dataset("cifar10", tmp_path / "raw", classes=list(range(10)), n_train_per_class=12, n_test=10)
    prepare_dataset("cifar10", str(tmp_path / "raw"), str(tmp_path / "data" / "cifar10"), download=False)
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config.update(datasets=["cifar10"], threat_model={"norm": "Linf", "eps": 8 / 255})
    config["data"]["root"] = str(tmp_path / "data")
    config["models"]["small_cnn"] = {"width": 2}
    config["pretrain"].update(epochs=4, batch_size=16, attack={"steps": 1, "step_size": 2 / 255, "random_start": True})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path / "config.yaml"


def _pretrain(tmp_path, config, tag):
    return [PYTHON, str(REPO / "scripts/pretrain.py"), "--config", str(config), "--dataset", "cifar10", "--arch", "small_cnn",
            "--out-model", str(tmp_path / f"{tag}.pt"), "--out-curve", str(tmp_path / f"{tag}.csv"), "--resume", str(tmp_path / f"{tag}.state.pt")]


def test_cifar_training_with_augmentation_resumes_after_sigkill_to_the_same_weights(tmp_path):
    config = _cifar_config(tmp_path)
    env = env_with_repo()
    straight = subprocess.run(_pretrain(tmp_path, config, "straight"), env=env, cwd=tmp_path, capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr
    assert "augmentation: random crop (padding 4 px) + horizontal flip" in straight.stderr

    state = tmp_path / "killed.state.pt"
    proc = subprocess.Popen(_pretrain(tmp_path, config, "killed"), env=env, cwd=tmp_path, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and load_torch(state)["epoch"] >= 1:  # two epochs done, two to go
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = load_torch(state)["epoch"]
    assert killed_at < 3

    resumed = subprocess.run(_pretrain(tmp_path, config, "killed"), env=env, cwd=tmp_path, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {state} after epoch {killed_at + 1}" in resumed.stderr
    a, b = load_torch(tmp_path / "straight.pt")["state_dict"], load_torch(tmp_path / "killed.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
