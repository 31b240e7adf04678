import json

import pytest
import torch
import torch.nn as nn
import yaml
from torch.nn.utils import parametrize

from advprune.checkpoint import save_model
from advprune.config import evaluate_params, validate
from advprune.data import load_meta, load_split
from advprune.models import build_model
from advprune.stats import from_bits
from advprune.training import TrainSettings, build_objective, train
from advprune.training.losses import CertifiedTraining
from advprune.verification import verified_accuracy

from conftest import REPO, load_script

ATTACK = {"steps": 5, "step_size": 0.03}
EPS = 0.05
# CROWN-IBP from scratch on digits in seconds: eps ramps per step over the first 5 epochs (HYDRA's
# schedule_length 6), then 3 epochs at eps; a smaller eps than the default's 0.1, which needs ~15 epochs
CERTIFIED = {"epochs": 8, "ramp": 6}


@pytest.mark.parametrize("name", ["ibp", "crown_ibp"])
def test_certified_objectives_give_finite_losses_and_gradients_also_to_hydra_scores(name, digits_dir):
    split = load_split(digits_dir, "train", n=64)
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1, (8, 8), width=4)

    class Scored(nn.Module):  # a learnable per-weight factor on frozen weights, as HYDRA's score training has
        def __init__(self, shape):
            super().__init__()
            self.score = nn.Parameter(torch.ones(shape))

        def forward(self, w):
            return w * self.score

    parametrize.register_parametrization(model[3], "weight", Scored(model[3].weight.shape))
    objective = build_objective(name, EPS, ATTACK, eps_ramp_epochs=3)
    objective.epoch = 1  # half-way up the ramp: CROWN-IBP mixes both bounds there
    loss, logits = objective(model, split.float_x(), split.y)
    loss.backward()
    assert torch.isfinite(loss) and logits.shape == (64, 10) and model.training
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model[3].parametrizations.weight[0].score.grad.abs().sum() > 0


def test_the_eps_ramp_and_beta_follow_hydras_schedule():
    crown = CertifiedTraining(0.3, "crown_ibp", ramp_epochs=4)
    seen = []
    for epoch in range(5):  # 2 steps per epoch: eps 0.3 (2t + i) / 6
        crown.epoch_start(epoch, 2)
        for _ in range(2):
            seen += crown.eps_beta()
            crown.step += 1
        crown.epoch_end(None, epoch)
    eps = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.3, 0.3, 0.3]
    assert seen == pytest.approx([v for e in eps for v in (e, 1 - e / 0.3)])
    assert CertifiedTraining(0.3, "ibp", ramp_epochs=4).eps_beta() == (0.0, 0.0)
    assert CertifiedTraining(0.3, "crown_ibp", ramp_epochs=1).eps_beta() == (0.3, 0.0)  # HYDRA's pruning/fine-tuning


class _Killed(Exception):
    pass


class _DiesInEpoch(CertifiedTraining):
    def epoch_end(self, model, epoch):
        if epoch == 2:
            raise _Killed
        return super().epoch_end(model, epoch)


def test_certified_training_resumes_exactly_with_its_schedule(digits_dir, tmp_path):
    split = load_split(digits_dir, "train", n=128)
    settings = TrainSettings(epochs=4, batch_size=32, lr=0.05)

    def run(objective, state):
        torch.manual_seed(0)
        model = build_model("small_cnn", 10, 1, (8, 8), width=4)
        return model, train(model, objective, split, split, settings, 0, state)

    model, curve = run(CertifiedTraining(EPS, "crown_ibp", ramp_epochs=4), tmp_path / "straight.pt")
    with pytest.raises(_Killed):
        run(_DiesInEpoch(EPS, "crown_ibp", ramp_epochs=4), tmp_path / "killed.pt")
    resumed, resumed_curve = run(CertifiedTraining(EPS, "crown_ibp", ramp_epochs=4), tmp_path / "killed.pt")
    assert [r["train_eps"] for r in curve] == pytest.approx([EPS * 3 / 12, EPS * 7 / 12, EPS * 11 / 12, EPS])  # 4 steps per epoch
    assert [r["train_eps"] for r in resumed_curve] == [r["train_eps"] for r in curve]
    for a, b in zip(model.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


@pytest.fixture(scope="module")
def trained(digits_dir, tmp_path_factory):
    """small_cnn (width 8) trained on the digits train split by CROWN-IBP and by PGD-AT, same epochs and lr
    (about 10 s together on one core)."""
    out = tmp_path_factory.mktemp("certified")
    train_split, val = load_split(digits_dir, "train"), load_split(digits_dir, "val")
    models = {}
    for name in ("crown_ibp", "pgd_at"):
        torch.manual_seed(0)
        model = build_model("small_cnn", 10, 1, (8, 8), width=8)
        objective = build_objective(name, EPS, ATTACK, eps_ramp_epochs=CERTIFIED["ramp"])
        train(model, objective, train_split, val, TrainSettings(epochs=CERTIFIED["epochs"], batch_size=64, lr=0.05), 0, out / f"{name}.state.pt")
        models[name] = model.eval()
    return models


def test_crown_ibp_training_gives_clearly_higher_verified_accuracy_than_pgd_at(trained, digits_dir):
    test = load_split(digits_dir, "test")
    verified = {name: verified_accuracy(m, test.float_x(), test.y, EPS).either.float().mean() for name, m in trained.items()}
    assert verified["crown_ibp"] > verified["pgd_at"] + 0.2, verified


def test_every_record_has_verified_le_autoattack_le_pgd_le_clean_point_by_point(trained, digits_dir, tmp_path):
    """On the CROWN-IBP model (PGD-AT's has no certified point): the record of scripts/evaluate.py."""
    config = validate(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))
    config["threat_model"]["eps"] = EPS
    config["evaluate"].update(n_examples=24, latency=None, pgd={"steps": 5, "restarts": 1, "step_size": 0.03},
                              hofmn={"steps": 20, "trials": 2, "tune_steps": 10, "tune_batch": 16, "seed": 0})
    save_model(tmp_path / "m.pt", trained["crown_ibp"], "small_cnn", {"width": 8}, load_meta(digits_dir))
    load_script("evaluate").main(str(tmp_path / "m.pt"), digits_dir, "digits", "small_cnn", 0, "crown_ibp", 0, evaluate_params(config),
                            str(tmp_path / "r.json"))
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["verification"]["status"] == "computed"
    assert record["verified_acc"] <= record["autoattack_acc"] <= record["pgd_acc"] <= record["clean_acc"]
    assert max(record["verified_ibp_acc"], record["verified_crown_acc"]) <= record["verified_acc"]
    assert record["verified_acc"] > 0.2  # not vacuous
    bits = {k: from_bits(v) for k, v in record["per_point"].items()}
    assert bits["verified"].mean() == pytest.approx(record["verified_acc"])
    for attack in ("clean", "pgd", "autoattack", "hofmn"):
        assert not (bits["verified"] & ~bits[attack]).any(), attack  # certified => robust to every attack that ran
    assert set(record["verification_seconds"]) == {"ibp", "crown", "total"}
