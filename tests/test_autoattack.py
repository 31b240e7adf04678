"""AutoAttack assembled from torchattacks' parts, checked against the original (pyautoattack) on a tiny
adversarially trained CNN for scikit-learn's 8x8 digits."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits

import pyautoattack
from advprune.attacks.autoattack import AutoAttack

torch.set_num_threads(2)

EPS = 0.15  # FGSM-trained at this eps the CNN keeps 35-40 % robust accuracy: neither trivial nor hopeless
ORDER = ["clean", "apgd-ce", "apgd-t", "fab-t", "square"]


def digits(classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits(n_class=classes)
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[perm], y[perm]


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, epochs: int) -> nn.Module:
    """FGSM with a random start (Wong et al. 2020): seconds on CPU, enough for non-trivial robustness."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(epochs):
        for xb, yb in zip(x.split(64), y.split(64)):
            delta = torch.empty_like(xb).uniform_(-eps, eps).requires_grad_()
            model.eval()
            (grad,) = torch.autograd.grad(F.cross_entropy(model((xb + delta).clamp(0, 1)), yb), delta)
            x_adv = (xb + (delta + 1.25 * eps * grad.sign()).clamp(-eps, eps)).clamp(0, 1).detach()
            model.train()
            opt.zero_grad()
            F.cross_entropy(model(x_adv), yb).backward()
            opt.step()
    model.eval().zero_grad(set_to_none=True)
    return model


@pytest.fixture(scope="module")
def setup():
    x, y = digits()
    torch.manual_seed(0)
    # Dropout makes "attacked in train mode" observable.
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Dropout(0.1), nn.Linear(16 * 4 * 4, 10))
    train(model, x[:1400], y[:1400], EPS, epochs=8)
    return model, x[1400:1600], y[1400:1600]


@pytest.fixture(scope="module")
def ours(setup):
    model, x, y = setup
    return AutoAttack(model, eps=EPS, seed=0)(x, y)


def test_matches_original_autoattack(setup, ours):
    model, x, y = setup
    original = pyautoattack.AutoAttack(model, norm="Linf", eps=EPS, version="standard", seed=0)
    x_orig, _ = original.run_standard_evaluation(x, y, batch_size=500)  # our batch size: the seeds restart per batch
    with torch.no_grad():
        acc_orig = (model(x_orig).argmax(1) == y).float().mean().item()
    assert 0.2 < ours.robust_accuracy < 0.7, "setup too easy or too hard to tell the attacks apart"
    assert abs(ours.robust_accuracy - acc_orig) <= 0.02, (ours.robust_after, acc_orig)
    # Same settings and seeds give the same adversarial points (exactly, in practice); with 10-step APGD
    # (torchattacks' default) only about half of them agreed.
    same = ((ours.x_adv - x_orig).flatten(1).abs().amax(1) < 1e-5).float().mean().item()
    assert same >= 0.95, same


def test_deterministic_pure_and_in_eval_mode(setup, ours):
    model, x, y = setup
    model.train().zero_grad(set_to_none=True)  # the original's FAB leaves parameter gradients behind
    torch.rand(7)  # another global RNG state than for the first call
    state = torch.get_rng_state()
    try:
        again = AutoAttack(model, eps=EPS, seed=0, log_progress=False)(x, y)
        assert model.training
    finally:
        model.eval()
    assert torch.equal(torch.get_rng_state(), state)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    # Differences mean non-determinism or an attack run in train mode (dropout changes the path).
    assert torch.equal(again.robust, ours.robust)
    assert torch.equal(again.x_adv, ours.x_adv)


@pytest.mark.parametrize("norm, eps", [("Linf", EPS), ("L2", 0.5)])
def test_result_is_valid(setup, ours, norm, eps):
    model, x, y = setup
    result = ours if norm == "Linf" else AutoAttack(model, norm="L2", eps=eps, seed=0, log_progress=False)(x[:30], y[:30])
    x, y = x[: len(result.x_adv)], y[: len(result.x_adv)]
    delta = (result.x_adv - x).flatten(1)
    dist = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
    assert dist.max() <= eps + 1e-5
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert not (result.robust & ~result.clean_correct).any()
    assert list(result.robust_after) == ORDER and list(result.seconds) == ORDER[1:]
    accs = list(result.robust_after.values())
    assert all(a >= b for a, b in zip(accs, accs[1:]))
    assert accs[0] == pytest.approx(result.clean_correct.float().mean().item())
    assert accs[-1] == pytest.approx(result.robust_accuracy)
    assert result.robust_accuracy < accs[0], "nothing broken: the checks below would be vacuous"
    with torch.no_grad():
        correct_adv = model(result.x_adv).argmax(1) == y
    assert torch.equal(correct_adv, result.robust)  # broken points really are misclassified
    assert torch.equal(result.x_adv[result.robust], x[result.robust])


def test_target_classes_with_few_classes(monkeypatch):
    x, y = digits(classes=4)
    torch.manual_seed(0)
    model = train(nn.Sequential(nn.Flatten(), nn.Linear(64, 4)), x[:500], y[:500], eps=0.0, epochs=3)
    atk = AutoAttack(model, eps=1e-3, n_classes=4, seed=0, log_progress=False)  # eps tiny: every target is tried
    atk.attacks["square"].n_queries = 10  # irrelevant here, and the slowest part when nothing breaks
    seen = {"apgd-t": set(), "fab-t": set()}
    for name, method in [("apgd-t", "attack_single_run"), ("fab-t", "attack_single_run_targeted")]:
        part = atk.attacks[name]

        def spy(*args, _name=name, _part=part, _run=getattr(part, method), **kwargs):
            seen[_name].add(_part.target_class)  # k: the attack targets the k-th most likely class
            return _run(*args, **kwargs)

        monkeypatch.setattr(part, method, spy)
    result = atk(x[500:540], y[500:540])
    assert result.robust.any()
    assert seen == {"apgd-t": {2, 3, 4}, "fab-t": {2, 3, 4}}  # all 3 other classes, as n_classes - 1
    # Many classes: the original's 9 targets, not torchattacks' n_classes - 1.
    many = AutoAttack(nn.Linear(64, 100), n_classes=100)
    assert many.attacks["apgd-t"].n_target_classes == many.attacks["fab-t"].n_target_classes == 9
    with pytest.raises(ValueError, match="outputs 4 classes"):
        AutoAttack(model, n_classes=10)(x[:5], y[:5])
    with pytest.raises(ValueError, match="at least 4 classes"):
        AutoAttack(model, n_classes=3)
