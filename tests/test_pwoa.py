import collections
import functools
import inspect
import math

import pytest
import torch
import torch.nn.functional as F
import torchattacks
import yaml
from conftest import REPO, prune_context, small_model

from advprune.attacks.pgd import PGD
from advprune.models.weights import layer_sparsity, prunable_weights
from advprune.pruning import build_method
from advprune.pruning.pwoa import ADMM, GAP_CLOSED, PwoA, PwoALoss, _collect, centered_kernel, convergence, hidden_taps, normalized_hsic
from advprune.training import trainer

FAST = {"admm_epochs": 2, "retrain_epochs": 1, "rho_every": 1, "batch_size": 64, "epoch_steps": None}
TERMS = ("loss_distill", "loss_ce", "adv_batches")
HSIC = ("loss_hsic_x", "loss_hsic_y")


def _context(digits_dir, **kwargs):
    return prune_context(digits_dir, seed=3, **kwargs)


@pytest.fixture
def attack_calls(monkeypatch):
    """Counts every call into an attack (our PGD, every torchattacks attack) while the real method runs, under
    "training" inside the training steps (where PwoA's claim is that none are made) and "other" elsewhere."""
    calls = collections.Counter()
    stepping = []
    real_step = trainer.training_step

    @functools.wraps(real_step)
    def step(*args, **kwargs):
        stepping.append(True)
        try:
            return real_step(*args, **kwargs)
        finally:
            stepping.pop()

    monkeypatch.setattr(trainer, "training_step", step)

    def count(cls, name):
        real = getattr(cls, name)

        @functools.wraps(real)
        def counted(*args, **kwargs):
            calls["training" if stepping else "other"] += 1
            calls[f"{cls.__name__}.{name}"] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(cls, name, counted)

    count(PGD, "perturb")
    count(PGD, "__call__")
    count(torchattacks.attack.Attack, "__call__")
    for obj in vars(torchattacks).values():
        if isinstance(obj, type) and issubclass(obj, torchattacks.attack.Attack) and "forward" in vars(obj):
            count(obj, "forward")
    return calls


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_pwoa_reaches_the_target_sparsity_and_reports_its_loss_terms(digits_dir, sparsity, attack_calls):
    model = small_model()
    result = build_method("pwoa", **FAST).prune(model, sparsity, _context(digits_dir))

    assert set(result.masks) == set(prunable_weights(model))
    assert all(int((~m).sum()) == round(sparsity * m.numel()) for m in result.masks.values())
    # the retrained weights left in the model are already pruned: no apply_masks needed
    rows = layer_sparsity(model)
    assert abs(sum(r["sparsity"] * r["n_params"] for r in rows) / sum(r["n_params"] for r in rows) - sparsity) < 0.005

    curves = result.info["curves"]
    assert [len(curves["admm"]), len(curves["retrain"])] == [2, 1]
    for phase, extra in (("admm", ("loss_admm", "rho", "prune_gap")), ("retrain", HSIC)):
        for row in curves[phase]:
            assert all(math.isfinite(row[k]) for k in (*TERMS, *extra)), row
            assert row["adv_batches"] == 0
    # HSIC is computed where it is weighted (official: retraining only), never for a curve column alone
    assert all(row["loss_hsic_x"] > 0 and row["loss_hsic_y"] > 0 for row in curves["retrain"])
    assert not any(key in row for key in HSIC for row in curves["admm"])
    assert "loss_admm" not in curves["retrain"][0]
    # only the retraining validates robustly: it keeps its epoch of best robust validation accuracy (official, on test)
    assert all(math.isnan(row["val_robust_acc"]) for row in curves["admm"])
    assert all(0 <= row["val_robust_acc"] <= 1 for row in curves["retrain"]) and result.info["selected_epoch"] == 1
    assert [row["rho"] for row in curves["admm"]] == pytest.approx([0.01, 0.0135])
    assert result.info["rho_final"] == pytest.approx(0.01 * 1.35**2)
    hard = result.info["hard_prune"]
    assert hard["prune_gap"] == pytest.approx(curves["admm"][-1]["prune_gap"]) and 0 < hard["prune_gap"] <= hard["prune_gap_dense"] + 0.05
    convergence = result.info["convergence"]  # two short cycles: rho far from its cap, the gap open
    assert convergence["converged"] is False and not convergence["checks"]["rho_cap"]["ok"] and not convergence["checks"]["prune_gap"]["ok"]
    assert convergence["checks"]["rho_cap"]["value"] == pytest.approx(result.info["rho_final"]) and "rho 0.0182 (cap 1)" in convergence["summary"]
    assert attack_calls["training"] == 0 and attack_calls["other"] > 0, attack_calls


def test_pure_pwoa_never_attacks_and_mixing_does(digits_dir, attack_calls):
    build_method("pwoa", **FAST).prune(small_model(), 0.75, _context(digits_dir))
    assert attack_calls["training"] == 0, attack_calls  # the retraining's checkpoint selection attacks the validation split only

    result = build_method("pwoa", **{**FAST, "mix_ratio": 0.5}).prune(small_model(), 0.75, _context(digits_dir))
    assert attack_calls["training"] > 0  # the counter sees attacks when there are some
    fractions = [row["adv_batches"] for rows in result.info["curves"].values() for row in rows]
    assert 0 < sum(fractions) / len(fractions) < 1
    assert all(0 <= row["val_robust_acc"] <= 1 for rows in result.info["curves"].values() for row in rows)


def test_same_seed_same_masks_and_weights(digits_dir):
    runs = []
    for _ in range(2):
        model = small_model()
        result = build_method("pwoa", **FAST).prune(model, 0.9, _context(digits_dir))
        runs.append((result.masks, {k: v.detach().clone() for k, v in model.state_dict().items()}))
    (masks_a, weights_a), (masks_b, weights_b) = runs
    assert all(torch.equal(masks_a[k], masks_b[k]) for k in masks_a)
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_resumed_run_matches_an_uninterrupted_one(digits_dir, tmp_path, monkeypatch):
    options = {**FAST, "admm_epochs": 3, "mix_ratio": 0.5}  # the mixing generator and Z/U/rho must all resume
    straight = small_model()
    expected = build_method("pwoa", **options).prune(straight, 0.75, _context(digits_dir, resume_prefix=str(tmp_path / "a")))

    real_epoch_end, calls = PwoALoss.epoch_end, []

    def killed_in_second_epoch(self, model, epoch):
        calls.append(epoch)
        if len(calls) == 2:
            raise KeyboardInterrupt  # after the state of the first epoch was written
        return real_epoch_end(self, model, epoch)

    monkeypatch.setattr(PwoALoss, "epoch_end", killed_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        build_method("pwoa", **options).prune(small_model(), 0.75, _context(digits_dir, resume_prefix=str(tmp_path / "b")))
    monkeypatch.setattr(PwoALoss, "epoch_end", real_epoch_end)
    resumed = small_model()
    result = build_method("pwoa", **options).prune(resumed, 0.75, _context(digits_dir, resume_prefix=str(tmp_path / "b")))

    assert all(torch.equal(expected.masks[k], result.masks[k]) for k in expected.masks)
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()))
    assert result.info["curves"]["admm"][-1]["rho"] == expected.info["curves"]["admm"][-1]["rho"]


def test_admm_updates_z_u_and_rho_as_the_official_code():
    w = torch.nn.Parameter(torch.tensor([0.5, -2.0, 0.1, 3.0]))
    admm = ADMM({"w": w}, 0.5, rho=0.01, rho_factor=1.35, rho_max=0.0136, every=2, reset_z_each_epoch=True)
    assert admm.z["w"].tolist() == [0.0, -2.0, 0.0, 3.0] and admm.u["w"].tolist() == [0, 0, 0, 0]
    assert float(admm.penalty().detach()) == pytest.approx(0.5 * 0.01 * (0.5**2 + 0.1**2))

    with torch.no_grad():
        w.copy_(torch.tensor([1.0, -2.0, 0.2, 0.4]))
    admm.epoch_end(0)  # not an update epoch: Z <- Proj(W), U kept
    assert admm.z["w"].tolist() == pytest.approx([1.0, -2.0, 0.0, 0.0]) and admm.rho == 0.01
    admm.u["w"] = torch.tensor([0.0, 0.0, 1.0, 0.0])
    admm.epoch_end(1)  # update: rho grows, Z <- Proj(W + U), U <- U + W - Z
    assert admm.rho == pytest.approx(0.0135)
    assert admm.z["w"].tolist() == pytest.approx([0.0, -2.0, 1.2, 0.0])  # W + U = [1, -2, 1.2, 0.4]: U moved the kept set
    assert admm.u["w"].tolist() == pytest.approx([1.0, 0.0, 0.0, 0.4])
    admm.epoch_end(3)
    assert admm.rho == 0.0136  # capped at rho_max

    # an epoch of two passes: Z is reset after every second pass only, the update comes every `every` passes
    with torch.no_grad():
        w.copy_(torch.tensor([0.5, -2.0, 0.1, 3.0]))
    admm = ADMM({"w": w}, 0.5, rho=0.01, rho_factor=1.35, rho_max=1.0, every=4, reset_z_each_epoch=True, epoch_passes=2)
    with torch.no_grad():
        w.copy_(torch.tensor([0.1, 2.0, 3.0, 0.2]))
    admm.epoch_end(0)  # mid-epoch: Z stays Proj of the initial W
    assert admm.z["w"].tolist() == pytest.approx([0.0, -2.0, 0.0, 3.0])
    admm.epoch_end(1)
    assert admm.z["w"].tolist() == pytest.approx([0.0, 2.0, 3.0, 0.0]) and admm.rho == 0.01
    admm.epoch_end(3)
    assert admm.rho == pytest.approx(0.0135)


def test_an_epoch_of_the_schedule_spans_the_passes_its_steps_need(digits_dir):
    """epoch_steps 8 on 256 training images at batch 64 (4 steps a pass): every epoch of the schedule is two passes,
    the ADMM cycle (rho_every 3 epochs) six, its learning rate a tenth lower after each two."""
    method = build_method("pwoa", admm_epochs=3, retrain_epochs=1, rho_every=3, batch_size=64, epoch_steps=8)
    assert method.passes_per_epoch(256) == 2 and method.passes_per_epoch(10_000) == 1  # never less than one pass
    result = method.prune(small_model(), 0.75, _context(digits_dir))
    admm, retrain = result.info["curves"]["admm"], result.info["curves"]["retrain"]
    assert result.info["passes_per_epoch"] == 2 and [len(admm), len(retrain)] == [6, 2]
    assert [row["lr"] for row in admm] == pytest.approx([0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001])
    assert [row["rho"] for row in admm] == pytest.approx([0.01] * 6) and result.info["rho_final"] == pytest.approx(0.0135)
    assert sum(row["steps"] for row in admm) == 24


def test_the_retraining_keeps_its_best_robust_validation_epoch(digits_dir, tmp_path):
    model = small_model()
    result = build_method("pwoa", **{**FAST, "retrain_epochs": 3}).prune(model, 0.9, _context(digits_dir, resume_prefix=str(tmp_path / "job")))
    curve = result.info["curves"]["retrain"]
    best = max(curve, key=lambda row: row["val_robust_acc"])
    state = torch.load(tmp_path / "job.retrain.state.pt", weights_only=False)
    assert result.info["selected_epoch"] == best["epoch"] == state["best"]["epoch"]
    assert all(torch.equal(v, state["best"]["model"][k]) for k, v in model.state_dict().items())


def test_convergence_needs_rho_at_its_cap_and_the_gap_closed():
    w = torch.nn.Parameter(torch.tensor([0.5, -2.0, 0.1, 3.0]))
    admm = ADMM({"w": w}, 0.5, rho=1.0, rho_factor=1.35, rho_max=1.0, every=3, reset_z_each_epoch=True)
    curve = [{"prune_gap": 0.05}]
    hard = {"prune_gap_dense": 0.8, "prune_gap": 0.05, "val_clean_acc_before": 0.9, "val_clean_acc_after": 0.89}
    report = convergence(admm, curve, hard, rho_max=1.0)
    assert report["converged"] and report["checks"]["prune_gap"] == {"value": 0.05, "target": GAP_CLOSED * 0.8, "ok": True}
    assert "prune gap 0.800 -> 0.050" in report["summary"] and "val clean 0.900 -> 0.890" in report["summary"]
    assert not convergence(admm, curve, {**hard, "prune_gap": 0.2}, rho_max=1.0)["converged"]  # only three quarters of the gap closed
    admm.rho = 0.5
    assert not convergence(admm, curve, hard, rho_max=1.0)["checks"]["rho_cap"]["ok"]


def test_normalized_hsic():
    torch.manual_seed(0)
    m, c = 200, 10
    y = torch.arange(m) % c
    labels = F.one_hot(y, c).float()
    # identical one-hot labels: R is (almost) the projector on the c - 1 centred class directions
    assert float(normalized_hsic(labels, labels, "linear", "linear")) == pytest.approx(c - 1, abs=0.01)
    # features that are a function of the label carry all of it, independent ones next to nothing
    dependent = torch.randn(c, 16)[y]
    independent = torch.randn(m, 2)
    full = float(normalized_hsic(dependent, labels, "gaussian", "linear"))
    assert full == pytest.approx(c - 1, rel=0.02)
    unrelated = float(normalized_hsic(independent, labels, "gaussian", "linear"))
    assert unrelated < 0.1 * full
    assert unrelated == pytest.approx(float(normalized_hsic(labels, independent, "linear", "gaussian")))  # tr(R_A R_B) is symmetric

    # nHSIC(X, X) = sum l^2 / (l + eps m)^2 over the eigenvalues l of H K H, K built independently
    x = torch.rand(64, 30, dtype=torch.float64)
    k = torch.exp(-torch.cdist(x, x) ** 2 / (2 * 5.0**2 * 30))
    h = torch.eye(64, dtype=torch.float64) - 1 / 64
    lam = torch.linalg.eigvalsh(h @ k @ h).clamp_min(0)
    assert float(normalized_hsic(x, x)) == pytest.approx(float((lam**2 / (lam + 1e-5 * 64) ** 2).sum()), rel=1e-6)
    assert torch.allclose(centered_kernel(x), k @ h)


@pytest.mark.parametrize("arch, expected", [("small_cnn", 4), ("resnet18", 10), ("wrn_28_4", 14), ("vgg16_bn", 15)])
def test_hidden_taps(arch, expected):
    model = small_model(arch).train()
    with _collect(hidden_taps(model)) as hiddens:
        logits = model(torch.rand(5, 1, 8, 8))
    assert len(hiddens) == expected
    assert all(h.shape[0] == 5 and h is not logits for h in hiddens)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert hiddens[-1].flatten(1).shape[1] == last.in_features  # the penultimate features close the list
    if arch == "resnet18":  # the stem output opens it, as in the official ResNet
        assert [n for n, _, _ in hidden_taps(model)][:2] == ["layer1.0", "layer1.0"] and hiddens[0].shape == (5, 4, 8, 8)
    with torch.no_grad():  # hooks are gone after the block
        model(torch.rand(2, 1, 8, 8))
    assert len(hiddens) == expected


def test_options_are_validated_and_match_the_schema():
    schema = yaml.safe_load((REPO / "workflow/schemas/methods/pwoa.schema.yaml").read_text())["properties"]
    defaults = {name: p.default for name, p in inspect.signature(PwoA.__init__).parameters.items() if name != "self"}
    assert {k: v["default"] for k, v in schema.items() if k != "method"} == defaults
    for bad in ({"mix_ratio": 1.5}, {"rho_every": 0}, {"temperature": 0}, {"admm_hsic": "yes"}, {"rho_max": 0.001}, {"batch_size": 1},
                {"epoch_steps": 0}):
        with pytest.raises(ValueError, match="pwoa: " + next(iter(bad))):
            build_method("pwoa", **bad)
