import inspect
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from conftest import PRETRAIN, REPO, prune_context, small_model

from advprune.data import load_split
from advprune.models.weights import layer_sparsity, prunable_weights
from advprune.pruning import build_method, masks_from_scores
from advprune.pruning.hydra import Hydra, _score_phase, convergence
from advprune.training import TrainSettings, apply_masks, build_objective, train


def _lwm(model, sparsity, include_first_last=True):
    return masks_from_scores({n: w.detach().abs() for n, w in prunable_weights(model, include_first_last).items()}, sparsity)


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
@pytest.mark.parametrize("arch", ["small_cnn", "resnet18"])
def test_target_sparsity_in_every_layer(digits_dir, arch, sparsity):
    model = small_model(arch)
    result = build_method("hydra", epochs=1, batch_size=64).prune(model, sparsity, prune_context(digits_dir))
    assert set(result.masks) == set(prunable_weights(model))  # first and last layer included by default
    assert all(int((~m).sum()) == round(sparsity * m.numel()) for m in result.masks.values())
    apply_masks(model, result.masks)
    rows = layer_sparsity(model)
    assert abs(sum(r["sparsity"] * r["n_params"] for r in rows) / sum(r["n_params"] for r in rows) - sparsity) < 0.005
    assert [r["epoch"] for r in result.info["curves"]["scores"]] == [1] and result.info["objective"] == "trades"  # the official adv trainer


def test_scaled_scores_start_from_layerwise_lwm(digits_dir):
    model = small_model("resnet18")
    method = build_method("hydra", epochs=0)
    scores = method.initial_scores(prunable_weights(model), seed=0)
    w = model.layer1[0].conv1.weight.detach()
    s = scores["layer1.0.conv1.weight"]
    assert torch.allclose(s, math.sqrt(6 / (w.shape[1] * 9)) * w / w.abs().max())
    assert s.abs().max() == pytest.approx(math.sqrt(6 / (w.shape[1] * 9)))  # the Kaiming-uniform bound
    result = method.prune(model, 0.9, prune_context(digits_dir))
    lwm = _lwm(model, 0.9)
    assert all(torch.equal(result.masks[n], lwm[n]) for n in lwm)
    assert result.info["mask_changed"] == 0


def test_score_gradient_is_straight_through_as_in_getsubnet():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    x = torch.randn(4, 6)
    initial = {n: torch.randn(w.shape) for n, w in prunable_weights(model).items()}
    with _score_phase(model, initial, 0.6, freeze_bn=False) as scores:
        model(x).square().sum().backward()
        grads = {n: s.grad.clone() for n, s in scores.items()}
    masks = masks_from_scores({n: s.abs() for n, s in initial.items()}, 0.6)
    # The same network with the masked weights as leaves: d loss / d (W * M).
    effective = {n: (w.detach() * masks[n]).requires_grad_() for n, w in prunable_weights(model).items()}
    out = F.linear(F.relu(F.linear(x, effective["0.weight"], model[0].bias)), effective["2.weight"], model[2].bias)
    out.square().sum().backward()
    for name, w in prunable_weights(model).items():
        expected = effective[name].grad * w.detach() * initial[name].sign()  # identity through the top-k, then |s|
        assert torch.allclose(grads[name], expected, atol=1e-6)
        assert (grads[name][~masks[name]] != 0).any()  # pruned weights' scores learn too


def test_training_moves_the_mask_and_leaves_the_model_plain(digits_dir):
    model = small_model()
    before = _snapshot(model)
    result = build_method("hydra", epochs=2, batch_size=64, objective="natural").prune(model, 0.9, prune_context(digits_dir))
    lwm = _lwm(model, 0.9)
    flipped = sum(int((lwm[n] != m).sum()) for n, m in result.masks.items())
    assert flipped > 0 and result.info["mask_changed"] == pytest.approx(flipped / sum(m.numel() for m in lwm.values()))
    assert any((result.masks[n] & ~lwm[n]).any() for n in lwm)  # a weight LWM prunes came back
    assert result.info["curves"]["scores"][-1]["mask_changed"] == result.info["mask_changed"]
    # Conv/linear weights and biases untouched, layers and flags as before; BatchNorm trained (official default).
    after = model.state_dict()
    frozen = [f"{n}.{p}" for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) for p, _ in m.named_parameters()]
    assert len(frozen) == 7  # 5 weights, 2 linear biases
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["1.weight"], after["1.weight"])
    assert set(after) == set(before) and not any(hasattr(m, "parametrizations") for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_convergence_is_the_official_phase_s_steps_and_the_curve_tracks_the_mask(digits_dir):
    model = small_model()
    lwm = _lwm(model, 0.9)
    result = build_method("hydra", epochs=1, batch_size=64, objective="natural", schedule="constant").prune(model, 0.9, prune_context(digits_dir))
    kept = sum(int(m.sum()) for m in result.masks.values())
    replaced = sum(int((result.masks[n] & ~lwm[n]).sum()) for n in lwm) / kept  # one epoch: replaced since the initial mask
    assert replaced > 0 and result.info["curves"]["scores"][-1]["mask_replaced"] == pytest.approx(replaced)
    report = result.info["convergence"]
    assert report["checks"] == {"official_steps": {"value": 4, "target": 7820, "ok": False}} and not report["converged"]  # 256 images, batches of 64
    assert report["summary"] == ("4 of the official phase's 7820 optimizer steps (1 epochs); "
                                 f"the last epoch replaced {100 * replaced:.1f} % of the kept weights")
    rows = [{"steps": 391, "mask_replaced": 0.03}] * 20
    assert convergence(rows)["converged"] and not convergence(rows[:19])["converged"] and not convergence([])["converged"]


def test_freeze_bn_keeps_batchnorm_affine_parameters(digits_dir):
    model = small_model()
    before = _snapshot(model)
    build_method("hydra", epochs=1, batch_size=64, objective="natural", freeze_bn=True).prune(model, 0.5, prune_context(digits_dir))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "running" not in k and "num_batches" not in k)
    assert not torch.equal(before["1.running_mean"], after["1.running_mean"])  # statistics follow the masked network


def test_masks_stay_fixed_when_fine_tuning(digits_dir, tmp_path):
    model = small_model()
    masks = build_method("hydra", epochs=1, batch_size=64).prune(model, 0.9, prune_context(digits_dir)).masks
    apply_masks(model, masks)
    before = _snapshot(model)
    split = load_split(digits_dir, "train", n=128)
    objective = build_objective("pgd_at", 0.1, PRETRAIN["attack"])
    train(model, objective, split, split, TrainSettings(epochs=1, batch_size=32, lr=0.1, weight_decay=0.01), 0, tmp_path / "ft.pt", masks=masks)
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert (params[name][~mask] == 0).all()
        assert not torch.equal(params[name][mask], before[name][mask])


def test_same_seed_same_masks(digits_dir):
    method = build_method("hydra", epochs=1, batch_size=64, score_init="kaiming_uniform")
    a = method.prune(small_model(), 0.5, prune_context(digits_dir, seed=1)).masks
    b = method.prune(small_model(), 0.5, prune_context(digits_dir, seed=1)).masks
    c = method.prune(small_model(), 0.5, prune_context(digits_dir, seed=2)).masks
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_first_and_last_layers_can_stay_dense(digits_dir):
    model = small_model()
    method = build_method("hydra", epochs=1, batch_size=64, objective="natural")
    result = method.prune(model, 0.9, prune_context(digits_dir, include_first_last=False))
    names = list(prunable_weights(model))
    assert set(result.masks) == set(names[1:-1])
    apply_masks(model, result.masks)
    rows = layer_sparsity(model)
    assert rows[0]["sparsity"] == 0 and rows[-1]["sparsity"] == 0
    assert all(abs(r["sparsity"] - 0.9) <= 1 / r["n_params"] for r in rows[1:-1])


def test_a_rerun_resumes_the_score_phase(digits_dir, tmp_path):
    method = build_method("hydra", epochs=2, batch_size=64, objective="trades")
    first = method.prune(small_model(), 0.9, prune_context(digits_dir, resume_prefix=str(tmp_path / "job")))
    assert first.info["objective"] == "trades"
    again = method.prune(small_model(), 0.9, prune_context(digits_dir, resume_prefix=str(tmp_path / "job")))
    assert all(torch.equal(first.masks[k], again.masks[k]) for k in first.masks)
    assert again.info["curves"] == first.info["curves"]  # the same rows, timings included: loaded, not retrained


def test_options_are_validated_and_the_schema_defaults_are_the_constructors():
    for bad in ({"score_init": "snip"}, {"objective": "adv"}, {"epochs": -1}, {"lr": 0}, {"schedule": "step"}, {"freeze_bn": "no"},
                {"trades_beta": -1}, {"batchnorm": "frozen"}, {"epoch_steps": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            build_method("hydra", **bad)
    schema = yaml.safe_load((REPO / "workflow/schemas/methods/hydra.schema.yaml").read_text())["properties"]
    defaults = {k: p.default for k, p in inspect.signature(Hydra.__init__).parameters.items() if k != "self"}
    assert {k: v["default"] for k, v in schema.items() if k != "method"} == defaults
