import copy
import inspect

import pytest
import torch
import torch.nn as nn
import yaml
from conftest import PRETRAIN, REPO, prune_context, small_model

from advprune.data import load_split
from advprune.models.view import AttackView
from advprune.models.weights import layer_sparsity, prunable_weights
from advprune.pruning import build_method
from advprune.pruning._structured import remove_channels, structured_cost
from advprune.pruning.harp import Harp, HarpObjective, _ChannelUnits, _erk, _harp_phase, _initial_rates, _WeightUnits, convergence, rate_from_logit
from advprune.training import TrainSettings, apply_masks, build_objective, train


@pytest.fixture(scope="module")
def trained(digits_dir, tmp_path_factory):
    """small_cnn after a few natural epochs, so that validation accuracies differ between epochs."""
    model = small_model()
    split = load_split(digits_dir, "train", n=256)
    train(model, build_objective("natural", 0.1, PRETRAIN["attack"]), split, split, TrainSettings(epochs=6, batch_size=32, lr=0.05),
          0, tmp_path_factory.mktemp("pre") / "state.pt")
    return model


def _measured_sparsity(model, masks):
    apply_masks(model, masks)
    rows = layer_sparsity(model)
    return sum(r["sparsity"] * r["n_params"] for r in rows) / sum(r["n_params"] for r in rows)


@pytest.mark.parametrize(("arch", "sparsity", "options"), [
    ("small_cnn", 0.9, {"init_density": 0.5}),  # starts 5x denser than the target
    ("resnet18", 0.99, {}),  # the official 010_uni start, 10x denser than the target
])
def test_unstructured_learns_non_uniform_rates_and_meets_the_target(digits_dir, arch, sparsity, options):
    model = small_model(arch)
    method = build_method("harp", epochs=3, batch_size=64, epoch_steps=None, gamma0=2.0, lr_rates=0.2, **options)
    result = method.prune(model, sparsity, prune_context(digits_dir))
    info = result.info
    assert set(result.masks) == set(prunable_weights(model)) == set(info["rates"])
    assert abs(_measured_sparsity(model, result.masks) - sparsity) < 0.005
    kept = sum(int(m.sum()) for m in result.masks.values())
    total = sum(m.numel() for m in result.masks.values())
    assert kept == total - round(sparsity * total)
    assert all(int(result.masks[n].sum()) == round(r * result.masks[n].numel()) for n, r in info["rates"].items())
    # The training itself compressed: from the uniform start to the target, non-uniformly across layers.
    curve = info["curves"]["harp"]
    assert [r["epoch"] for r in curve] == [1, 2, 3]
    assert set(info["initial_rates"].values()) == {options.get("init_density", 0.1)}
    assert info["target_reached"] and min(r["density"] for r in curve) <= 1 - sparsity
    selected = curve[info["selected_epoch"] - 1]
    assert selected["target_reached"] and info["learned_density"] == pytest.approx(selected["density"])
    learned = torch.tensor(list(info["learned_rates"].values()))
    final = torch.tensor(list(info["rates"].values()))
    assert learned.max() - learned.min() > 0.02 and final.max() - final.min() > 0.02
    assert all({"density", "hw_loss", "gamma", "target_reached", "selection_score", "val_robust_acc"} <= set(r) for r in curve)
    assert all(f"rate/{n}" in curve[0] for n in info["rates"])


def test_gamma_grows_per_epoch_freezes_at_the_target_and_its_state_round_trips(digits_dir):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    units = _WeightUnits(model, include_first_last=True)
    target, r_min = 0.2, 0.02
    val = load_split(digits_dir, "val", n=32)
    x, y = next(val.batches(32))
    with _harp_phase(model, units, dict.fromkeys(units.names, 0.5), r_min, freeze_bn=False) as params:
        base = build_objective("natural", 0.1, PRETRAIN["attack"])
        objective = HarpObjective(base, units, params, target, gamma0=0.01, val=val)

        def set_rates(rate):
            with torch.no_grad():
                for q in params.logits.values():
                    q.fill_(torch.logit(torch.tensor((rate - r_min) / (1 - r_min))))

        seen = []
        for epoch, rate in enumerate([0.5, 0.5, 0.15, 0.5]):  # above, above, below, above the target again
            set_rates(rate)
            loss, _ = objective(model, x, y)
            c = sum(rate_from_logit(params.logits[n], r_min) * units.sizes[n] for n in units.names) / units.total
            assert float(c.detach()) == pytest.approx(rate)
            assert float((loss - base(model, x, y)[0]).detach()) == pytest.approx(objective.gamma * max(0.0, rate / target - 1), rel=1e-4)
            row = objective.epoch_end(model, epoch)
            seen.append((row["gamma"], row["target_reached"], row["hw_loss"]))
        state = objective.state_dict()
    assert [g for g, _, _ in seen] == pytest.approx([0.01, 0.02, 0.03, 0.03])  # (t + 1) * gamma0, then frozen
    assert [r for _, r, _ in seen] == [False, False, True, True]  # reaching the target is sticky (train.py's reach_hw)
    assert [h for _, _, h in seen] == pytest.approx([1.5, 1.5, 0.0, 1.5], rel=1e-5)
    assert objective.gamma == pytest.approx(0.03)
    restored = HarpObjective(base, units, params, target, gamma0=0.01)
    restored.load_state_dict(copy.deepcopy(state))
    assert (restored.epochs_done, restored.frozen_gamma, restored.gamma) == (4, objective.frozen_gamma, objective.gamma)
    assert HarpObjective(base, units, params, target, gamma0=0.01).gamma == pytest.approx(0.01)


def test_an_epoch_of_the_schedule_spans_the_passes_its_steps_need(digits_dir):
    """epoch_steps 8 on 256 training images at batch 64 (4 steps a pass): an epoch is two passes; gamma grows and
    the target is tested once per epoch, as train.py does after each of its 391-step epochs."""
    method = build_method("harp", epochs=2, batch_size=64, epoch_steps=8, objective="natural", gamma0=0.5)
    assert method.passes_per_epoch(256) == 2 and method.passes_per_epoch(10_000) == 1  # never less than one pass
    info = method.prune(small_model(), 0.9, prune_context(digits_dir)).info
    curve = info["curves"]["harp"]
    assert info["passes_per_epoch"] == 2 and len(curve) == 4 and sum(row["steps"] for row in curve) == 16
    assert not curve[0]["target_reached"]  # mid-epoch: not tested, whatever its loss
    frozen = next(i for i, row in enumerate(curve) if row["target_reached"])
    assert frozen in (1, 3) and round(curve[frozen]["hw_loss"], 4) == 0
    assert [row["gamma"] for row in curve[: frozen + 1]] == pytest.approx([0.5, 0.5, 1.0, 1.0][: frozen + 1])
    assert all(row["gamma"] == curve[frozen]["gamma"] for row in curve[frozen:])
    assert info["convergence"]["checks"]["gamma_frozen"] == {"value": frozen + 1, "target": "a pass <= 4", "ok": True}


def test_convergence_needs_gamma_frozen_and_the_learned_density_on_the_target():
    curve = [{"epoch": 1, "target_reached": False, "gamma": 0.01}, {"epoch": 2, "target_reached": True, "gamma": 0.02},
             {"epoch": 3, "target_reached": True, "gamma": 0.02}]
    report = convergence(curve, curve[2], 0.01004, 0.01)
    assert report["converged"] and report["checks"]["gamma_frozen"]["value"] == 2
    assert report["summary"] == "gamma froze at 0.02 after pass 2 of 3; pass 3 selected, learned density 1.0040% vs target 1.0000% (+0.4%)"
    overshot = convergence(curve, curve[2], 0.0098, 0.01)  # the rescaling would add 2 % of the weights HARP kept
    assert not overshot["converged"] and overshot["checks"]["learned_density"]["target"] == pytest.approx([0.0099, 0.0101])
    never = convergence([{**row, "target_reached": False} for row in curve], curve[2], 0.01, 0.01)
    assert not never["converged"] and never["checks"]["gamma_frozen"]["value"] is None and "never froze in 3 passes" in never["summary"]


def test_straight_through_gradients_reach_scores_and_rates():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    x = torch.randn(4, 6)
    units = _WeightUnits(model, include_first_last=True)
    r_min = 0.05
    with _harp_phase(model, units, {"0.weight": 0.43, "2.weight": 0.71}, r_min, freeze_bn=False) as params:
        effective = {n: model.get_submodule(n.removesuffix(".weight")).weight.detach() for n in units.names}
        model(x).square().sum().backward()
        grads = {n: (params.scores[n].grad.clone(), params.logits[n].grad.clone()) for n in units.names}
        scores = {n: params.scores[n].detach().clone() for n in units.names}
        logits = {n: params.logits[n].detach().clone() for n in units.names}
    weights = prunable_weights(model)
    masks = {n: effective[n] != 0 for n in units.names}
    assert [int(m.sum()) for m in masks.values()] == [30 - 17, 15 - 4]  # N - int((1 - r) N)
    leaves = {n: effective[n].clone().requires_grad_() for n in units.names}
    out = nn.functional.linear(torch.relu(nn.functional.linear(x, leaves["0.weight"], model[0].bias)), leaves["2.weight"], model[2].bias)
    out.square().sum().backward()
    for n in units.names:
        dmask = leaves[n].grad * weights[n].detach()  # dL/dM
        assert torch.allclose(grads[n][0], dmask * scores[n].sign(), atol=1e-6)
        s = torch.sigmoid(logits[n])
        assert float(grads[n][1]) == pytest.approx(float(dmask.sum() * (1 - r_min) * s * (1 - s)), rel=1e-4, abs=1e-7)


def test_the_attack_view_sees_the_masked_network():
    model = small_model("resnet18").eval()
    x = torch.rand(3, 1, 8, 8)
    dense = model(x)
    units = _WeightUnits(model, include_first_last=True)
    with _harp_phase(model, units, dict.fromkeys(units.names, 0.3), 0.01, freeze_bn=False):
        folded = AttackView(model)
        assert folded.pairs  # traced and folded with the masks attached
        masked = model.eval()(x)
        assert torch.allclose(folded.refresh()(x), masked, atol=1e-5)
        assert not torch.allclose(masked, dense, atol=1e-3)
    assert torch.equal(model(x), dense)  # plain layers and weights back afterwards


def test_checkpoint_is_the_best_validation_epoch_once_the_target_is_met(digits_dir, trained):
    model = copy.deepcopy(trained)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method = build_method("harp", epochs=4, batch_size=64, epoch_steps=None, init_density=0.6, gamma0=0.5, lr_rates=0.5, objective="natural")
    info = method.prune(model, 0.8, prune_context(digits_dir)).info
    curve = info["curves"]["harp"]
    reached = [r for r in curve if r["target_reached"]]
    assert reached and not curve[0]["target_reached"]  # from 0.6 the target 0.2 takes a few epochs
    best = max(reached, key=lambda r: r["val_clean_acc"])  # the natural objective selects on clean accuracy
    assert info["selected_epoch"] == best["epoch"] and info["target_reached"]
    assert info["learned_rates"] == pytest.approx({n: best[f"rate/{n}"] for n in info["learned_rates"]})
    assert info["gamma_frozen"] == reached[0]["gamma"]
    frozen = [k for k in before if k.endswith(".weight") and before[k].dim() > 1] + ["12.bias", "14.bias"]
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in frozen)  # conv/linear weights untouched
    assert not torch.equal(before["1.weight"], model.state_dict()["1.weight"])  # BatchNorm trained (official)
    assert not any(hasattr(m, "parametrizations") for m in model.modules()) and all(p.requires_grad for p in model.parameters())


def test_a_rerun_resumes_with_the_objective_state(digits_dir, tmp_path):
    method = build_method("harp", epochs=2, batch_size=64, epoch_steps=None, gamma0=1.0)
    first = method.prune(small_model(), 0.9, prune_context(digits_dir, resume_prefix=str(tmp_path / "job")))
    again = method.prune(small_model(), 0.9, prune_context(digits_dir, resume_prefix=str(tmp_path / "job")))
    assert all(torch.equal(first.masks[k], again.masks[k]) for k in first.masks)
    assert again.info == first.info  # curve (timings included) and frozen gamma loaded, not retrained


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18"])
def test_channel_masks_compute_what_the_smaller_network_computes(arch):
    model = small_model(arch).eval()
    x = torch.rand(4, 1, 8, 8)
    units = _ChannelUnits(model, x, include_first_last=True, measure="flops")
    rates = {name: 0.3 + 0.5 * i / len(units.names) for i, name in enumerate(units.names)}
    with _harp_phase(model, units, rates, 0.01, freeze_bn=False) as params:
        masked = model.eval()(x)
        counts = {n: units.sizes[n] - int((1 - float(r.detach())) * units.sizes[n]) for n, r in params.rates().items()}
        top = {n: params.scores[n].detach().abs().argsort(descending=True)[: counts[n]] for n in units.names}
        keep = {n: torch.zeros(units.sizes[n], dtype=torch.bool).index_fill_(0, top[n], True) for n in units.names}
    small = remove_channels(model, x, keep).eval()
    assert any(not k.all() for k in keep.values())
    assert torch.allclose(small(x), masked, atol=1e-5)
    # The cost model of the rates is the measured cost of the smaller network.
    assert units._density_of(counts) == pytest.approx(structured_cost(small, x)["flops"] / structured_cost(model, x)["flops"])


@pytest.mark.parametrize("budget", ["flops", "params"])
def test_channel_variant_returns_a_smaller_network_within_the_budget(digits_dir, budget):
    model = small_model("resnet18")
    sparsity = 0.5
    method = build_method("harp", granularity="channel", channel_budget=budget, epochs=2, batch_size=64, epoch_steps=None, gamma0=1.0)
    assert method.structured
    result = method.prune(model, sparsity, prune_context(digits_dir))
    info, x = result.info, torch.rand(2, 1, 8, 8)
    assert result.masks is None and result.model is not model
    dense, small = structured_cost(model, x), structured_cost(result.model, x)
    achieved = 1 - small[budget] / dense[budget]
    assert achieved == pytest.approx(info["cost_sparsity"])
    # At least the target; above it by less than one more channel of some group would add back.
    units = _ChannelUnits(model, x, include_first_last=True, measure=budget)
    counts = info["kept_channels"]
    step = max(units._density_of({**counts, n: counts[n] + 1}) - units._density_of(counts) for n in units.names if counts[n] < units.sizes[n])
    assert sparsity <= achieved <= sparsity + step
    assert info["corrected"]  # two epochs at the official rate lr leave the rates near their dense start
    assert model(x).shape == result.model(x).shape == (2, 10)


def test_channel_rates_learn_the_budget(digits_dir):
    model = small_model("resnet18")
    method = build_method("harp", granularity="channel", epochs=3, batch_size=64, epoch_steps=None, gamma0=1.0, lr_rates=10.0)
    result = method.prune(model, 0.5, prune_context(digits_dir))
    info = result.info
    assert info["target_reached"] and info["learned_density"] <= 0.5
    rates = torch.tensor(list(info["learned_rates"].values()))
    assert rates.max() - rates.min() > 0.1
    assert info["cost_sparsity"] >= 0.5


def test_initial_strategies():
    model = small_model("resnet18")
    units = _WeightUnits(model, include_first_last=True)
    for strategy in ("erk", "lamp"):
        rates = _initial_rates(units, strategy, 0.1, model, True)
        kept = sum(rates[n] * units.sizes[n] for n in units.names)
        assert kept == pytest.approx(0.1 * units.total, rel=1e-3)
        assert max(rates.values()) > 2 * min(rates.values()) and max(rates.values()) <= 1
    erk = _erk({"small": (4, 1, 3, 3), "big": (64, 64, 3, 3)}, 0.5)
    assert erk["small"] == 1.0 and 0 < erk["big"] < 0.5  # the small layer saturates, the big one takes the rest


def test_options_are_validated_and_the_schema_defaults_are_the_constructors():
    for bad in ({"granularity": "filter"}, {"objective": "adv"}, {"gamma0": 0}, {"r_min_factor": 1}, {"rate_init": "snip"},
                {"init_density": 0}, {"channel_budget": "latency"}, {"epochs": -1}, {"lr_rates": 0}, {"schedule": "step"},
                {"freeze_bn": "no"}, {"trades_beta": -1}, {"epoch_steps": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            build_method("harp", **bad)
    with pytest.raises(ValueError, match="uniform"):
        build_method("harp", granularity="channel", rate_init="erk")
    schema = yaml.safe_load((REPO / "workflow/schemas/methods/harp.schema.yaml").read_text())["properties"]
    defaults = {k: p.default for k, p in inspect.signature(Harp.__init__).parameters.items() if k != "self"}
    assert {k: v["default"] for k, v in schema.items() if k != "method"} == defaults
