import copy

import pandas as pd
import pytest
import torch
from conftest import REPO

from advprune.attacks.pgd import PGD
from advprune.config import ConfigError, load_config, validate
from advprune.data import load_split
from advprune.entry import write_csv
from advprune.models import build_model
from advprune.models.weights import prunable_weights
from advprune.pruning import PruneContext, build_method
from advprune.pruning._structured import channel_groups, channel_importance, keep_for_ratios, masked_equivalent, structured_cost, taylor_grads
from advprune.sensitivity import module_sensitivity

PRETRAIN = {"objective": "pgd_at", "attack": {"steps": 2, "step_size": 0.05, "random_start": True}, "batch_size": 64}
EXAMPLE = torch.zeros(1, 1, 8, 8)


def _with_batchnorm_statistics(model, split):
    """Non-trivial running statistics, so that output equivalence also covers the BatchNorm surgery."""
    model.train()
    with torch.no_grad():
        model(split.float_x())
    return model.eval()


@pytest.fixture(scope="module")
def resnet(digits_dir):
    """A ResNet-18 wide enough for the budget to be met to 0.5 % in whole channels, and its sensitivity table
    from the real sensitivity code."""
    torch.manual_seed(0)
    train, val = load_split(digits_dir, "train", n=128), load_split(digits_dir, "val", n=64)
    model = _with_batchnorm_statistics(build_model("resnet18", 10, 1, (8, 8), width=16), train)
    table = pd.DataFrame(module_sensitivity(model, val.float_x(), val.y, PGD(0.1, 0.05, 2), rho=0.1, steps=2))
    context = PruneContext(train=train, val=val, threat_model={"norm": "Linf", "eps": 0.1}, objective=PRETRAIN, sensitivity=table, seed=1)
    return model, context


def _removed(small, dense, measure):
    if measure == "params":  # measured independently of the method: weights of every prunable layer
        return 1 - sum(w.numel() for w in prunable_weights(small).values()) / sum(w.numel() for w in prunable_weights(dense).values())
    return 1 - structured_cost(small, EXAMPLE)["flops"] / structured_cost(dense, EXAMPLE)["flops"]


@pytest.mark.parametrize("measure", ["params", "flops"])
@pytest.mark.parametrize("sparsity", [0.5, 0.75, 0.9])
def test_ratios_meet_the_global_budget(resnet, measure, sparsity):
    model, context = resnet
    result = build_method("mrpf", measure=measure).prune(model, sparsity, context)
    removed = _removed(result.model, model, measure)
    assert abs(removed - sparsity) < 0.005
    assert result.info["reduction"] == pytest.approx(removed)
    assert result.masks is None and build_method("mrpf").structured


@pytest.mark.parametrize("criterion", ["l1", "l2", "random"])
def test_the_smaller_network_computes_what_the_masked_one_does(resnet, criterion):
    model, context = resnet
    state = copy.deepcopy(model.state_dict())
    result = build_method("mrpf", criterion=criterion).prune(model, 0.75, context)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # the dense model is left as it was

    groups = channel_groups(model, EXAMPLE)
    importance = channel_importance(model, groups, criterion, generator=torch.Generator().manual_seed(context.seed))
    keep = keep_for_ratios(groups, importance, result.info["ratios"])
    assert {g: [int(k.sum()), len(k)] for g, k in keep.items()} == result.info["channels"]
    for name, (kept, _) in result.info["channels"].items():
        assert result.model.get_submodule(name).weight.shape[0] == kept
    assert sum(p.numel() for p in result.model.parameters()) < sum(p.numel() for p in model.parameters())

    x = context.val.float_x()
    with torch.no_grad():
        expected = masked_equivalent(model, EXAMPLE, keep).eval()(x)
        assert torch.allclose(result.model.eval()(x), expected, atol=1e-5)


def _small_cnn_table(sensitivities):
    """A hand-made table with the sensitivity stage's columns, for small_cnn's five layers."""
    modules = ["0", "3", "7", "12", "14"]
    return pd.DataFrame({"module": modules, "module_index": range(5), "n_params": [0] * 5, "base_loss": [1.0] * 5,
                         "perturbed_loss": [1.0 + s for s in sensitivities], "sensitivity": sensitivities})


def _small_cnn_context(digits_dir, table, **kwargs):
    torch.manual_seed(0)
    train = load_split(digits_dir, "train", n=128)
    return PruneContext(train=train, threat_model={"norm": "Linf", "eps": 0.1}, objective=PRETRAIN, sensitivity=table, **kwargs)


def test_more_sensitive_groups_get_lower_ratios_within_the_clamps(digits_dir):
    sensitivity = [0.001, 0.5, 1.0, 4.0, 9.0]  # groups "0", "3", "7", "12"; the classifier "14" is no group
    context = _small_cnn_context(digits_dir, _small_cnn_table(sensitivity))
    method = build_method("mrpf", min_ratio=0.1, max_ratio=0.6, max_spread=None)  # the mapping alone, without the spread band
    result = method.prune(build_model("small_cnn", 10, 1, (8, 8), width=8), 0.4, context)
    ratios = result.info["ratios"]
    assert list(ratios) == ["0", "3", "7", "12"] and result.info["sensitivity"] == dict(zip(ratios, sensitivity))
    assert all(0.1 <= r <= 0.6 for r in ratios.values())
    assert ratios["0"] == 0.6  # near-zero sensitivity: clamped at max_ratio
    assert ratios["0"] >= ratios["3"] > ratios["7"] > ratios["12"]
    # Unclamped groups follow p_g = c * (MRS_g / mean + eps)^-1 with one c.
    weights = method.ratio_weights(result.info["sensitivity"])
    free = [g for g, r in ratios.items() if 0.1 < r < 0.6]
    assert len(free) >= 2 and len({round(ratios[g] / weights[g], 9) for g in free}) == 1
    assert weights == pytest.approx({g: 1 / (s / (sum(sensitivity[:4]) / 4) + 1e-3) for g, s in zip(ratios, sensitivity)})


def test_the_spread_band_keeps_every_group_within_2x_of_the_uniform_allocation_and_says_where_it_bound(digits_dir):
    """Group "0" (the first conv) is nearly insensitive: unbounded it is cut to max_ratio, with the band it keeps at
    least half the channels uniform pruning leaves it, and the report names it with the ratio it wanted."""
    context = _small_cnn_context(digits_dir, _small_cnn_table([0.001, 1.0, 1.2, 1.4, 1.0]))
    model = build_model("small_cnn", 10, 1, (8, 8), width=32)
    uniform = build_method("l1_filter").prune(model, 0.9, context).info
    bounded = build_method("mrpf").prune(model, 0.9, context).info
    unbounded = build_method("mrpf", max_spread=None).prune(model, 0.9, context).info
    assert bounded["uniform_ratios"] == uniform["ratios"]
    for g, p in uniform["ratios"].items():
        kept = 1 - p
        assert bounded["bounds"][g] == pytest.approx([max(0.0, 1 - 2 * kept), min(0.95, 1 - kept / 2)])
        assert bounded["bounds"][g][0] <= bounded["ratios"][g] <= bounded["bounds"][g][1]
    assert unbounded["channels"]["0"] == [2, 32] and uniform["channels"]["0"] == [10, 32]  # 0.95 of 32 channels go
    assert bounded["channels"]["0"] == [5, 32]  # the band's edge: half of uniform's 10
    assert bounded["ratios"]["12"] < uniform["ratios"]["12"] < bounded["ratios"]["3"]  # the most sensitive group keeps more, others pay
    for info in (bounded, unbounded, uniform):
        assert info["convergence"]["converged"] and abs(info["reduction"] - 0.9) < 0.01

    assert list(bounded["bounded"]) == ["0"]
    report = bounded["bounded"]["0"]
    assert report["side"] == "upper" and report["bound"] == "max_spread" and report["layers"] == ["0"]
    assert report["ratio"] == bounded["ratios"]["0"] and report["wanted"] > 0.95 and (report["channels_kept"], report["channels_wanted"]) == (5, 0)
    assert f"0 (max_spread: {report['ratio']:.3f}, wanted {report['wanted']:.3f})" in bounded["convergence"]["summary"]
    assert unbounded["bounded"]["0"]["bound"] == "max_ratio" and unbounded["bounds"]["0"] == [0.0, 0.95]


def test_spread_one_is_the_uniform_allocation(digits_dir):
    context = _small_cnn_context(digits_dir, _small_cnn_table([0.001, 0.5, 1.0, 4.0, 9.0]))
    model = build_model("small_cnn", 10, 1, (8, 8), width=16)
    uniform = build_method("l1_filter").prune(model, 0.75, context).info
    assert build_method("mrpf", max_spread=1).prune(model, 0.75, context).info["channels"] == uniform["channels"]


def test_an_unreachable_budget_is_reported_as_not_converged(digits_dir):
    context = _small_cnn_context(digits_dir, _small_cnn_table([1.0] * 5))
    model = build_model("small_cnn", 10, 1, (8, 8), width=8)
    for method in ("mrpf", "l1_filter"):
        report = build_method(method, max_ratio=0.5).prune(model, 0.9, context).info["convergence"]  # half of every group: ~75 %
        assert report["converged"] is False and not report["checks"]["budget_met"]
        assert report["checks"]["reached"] < 0.8 and "allow no closer" in report["summary"]
        assert set(report["checks"]["bounded"]) == {"0", "3", "7", "12"}  # every group at its upper bound


def test_power_zero_gives_uniform_ratios(digits_dir):
    context = _small_cnn_context(digits_dir, _small_cnn_table([0.001, 0.5, 1.0, 4.0, 9.0]))
    ratios = build_method("mrpf", sensitivity_power=0).prune(build_model("small_cnn", 10, 1, (8, 8), width=8), 0.5, context).info["ratios"]
    assert len(set(ratios.values())) == 1


def test_first_layer_stays_whole_without_include_first_last(digits_dir, tmp_path):
    model = build_model("small_cnn", 10, 1, (8, 8), width=8)
    val = load_split(digits_dir, "val", n=32)
    rows = module_sensitivity(model, val.float_x(), val.y, PGD(0.1, 0.05, 2), rho=0.1, steps=2, include_first_last=False)
    write_csv(rows, tmp_path / "sensitivity.csv")
    table = pd.read_csv(tmp_path / "sensitivity.csv")  # as the prune job reads it: nn.Sequential's layer names become integers
    result = build_method("mrpf").prune(model, 0.5, _small_cnn_context(digits_dir, table, include_first_last=False))
    assert "0" not in result.info["ratios"] and result.model[0].out_channels == 8
    dense = sum(w.numel() for w in prunable_weights(model, False).values())
    assert abs(1 - sum(w.numel() for w in prunable_weights(result.model, False).values()) / dense - 0.5) < 0.02


def test_taylor_ranks_by_the_adversarial_loss_without_touching_the_model(resnet):
    model, context = resnet
    state = copy.deepcopy(model.state_dict())
    taylor = build_method("mrpf", criterion="taylor", taylor_batches=2).prune(model, 0.5, context)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # BatchNorm statistics included
    assert abs(_removed(taylor.model, model, "params") - 0.5) < 0.01
    l1 = build_method("mrpf").prune(model, 0.5, context)
    assert taylor.info["ratios"] == l1.info["ratios"]  # same ratios, other filters
    kept = lambda r, g: r.model.get_submodule(g).weight  # noqa: E731
    pruned = [g for g, (kept_channels, n) in l1.info["channels"].items() if kept_channels < n]
    assert any(not torch.equal(kept(taylor, g), kept(l1, g)) for g in pruned)
    # the uniform baseline offers the same criterion: uniform ratios, the filters the Taylor scores rank first, the model untouched
    torch.manual_seed(0)  # the training attack's random start
    uniform = build_method("l1_filter", criterion="taylor", taylor_batches=2).prune(model, 0.5, context)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert uniform.info["ratios"] == build_method("l1_filter").prune(model, 0.5, context).info["ratios"]
    groups = channel_groups(model, EXAMPLE)
    torch.manual_seed(0)
    keep = keep_for_ratios(groups, channel_importance(model, groups, "taylor", grads=taylor_grads(model, context, 2)), uniform.info["ratios"])
    assert {g: [int(k.sum()), len(k)] for g, k in keep.items()} == uniform.info["channels"]
    running_mean = lambda m: m.layer3[1].bn1.running_mean  # noqa: E731
    assert torch.equal(running_mean(uniform.model), running_mean(model)[keep["layer3.1.conv1"]])
    by_l1 = keep_for_ratios(groups, channel_importance(model, groups, "l1"), uniform.info["ratios"])["layer3.1.conv1"]
    assert not torch.equal(keep["layer3.1.conv1"], by_l1)  # other filters than L1's: the criterion is not ignored


@pytest.mark.parametrize("criterion, ranking", [("l1", "weight_l1"), ("l2", "weight_l2"), ("taylor", "taylor"), ("random", "random")])
def test_criteria_differ_from_each_other_only_in_their_ranking(criterion, ranking):
    """What the findings table compares criteria by: one granularity, one allocation per method, random by its ranking."""
    uniform, adaptive = build_method("l1_filter", criterion=criterion).taxonomy(), build_method("mrpf", criterion=criterion).taxonomy()
    assert uniform == {**adaptive, "allocation": "uniform"} and adaptive["allocation"] == "sensitivity"
    assert (uniform["structure"], uniform["locality"], uniform["schedule"], uniform["ranking"]) == ("S", "L", "1S", ranking)


def test_the_config_entries_of_the_criterion_study_validate():
    config = load_config(REPO / "config/config.yaml")
    config["prune"]["methods"] = {"l1_filter": {}, "l2_filter": {"method": "l1_filter", "criterion": "l2"},
                                  "taylor_filter": {"method": "l1_filter", "criterion": "taylor"},
                                  "mrpf_unbounded": {"method": "mrpf", "max_spread": None}}
    config["studies"] = {"finetune": {"methods": ["l1_filter", "l2_filter", "taylor_filter"], "sparsity": 0.5}}
    methods = validate(config)["prune"]["methods"]
    assert methods["taylor_filter"]["taylor_batches"] == 8 and methods["mrpf_unbounded"]["max_spread"] is None
    config["prune"]["methods"], config["studies"] = {"mrpf": {"max_spread": 0.5}}, {}
    with pytest.raises(ConfigError, match="prune.methods.mrpf.max_spread"):
        validate(config)


def test_needs_a_matching_sensitivity_table(digits_dir):
    model = build_model("small_cnn", 10, 1, (8, 8), width=8)
    with pytest.raises(ValueError, match="sensitivity table"):
        build_method("mrpf").prune(model, 0.5, _small_cnn_context(digits_dir, None))
    table = _small_cnn_table([1.0] * 5).iloc[1:]
    with pytest.raises(ValueError, match="no row for 0"):
        build_method("mrpf").prune(model, 0.5, _small_cnn_context(digits_dir, table))


@pytest.mark.parametrize("options, match", [
    ({"criterion": "snip"}, "criterion"), ({"measure": "bytes"}, "measure"), ({"min_ratio": 0.5, "max_ratio": 0.4}, "min_ratio"),
    ({"max_ratio": 1.0}, "max_ratio"), ({"sensitivity_power": -1}, "sensitivity_power"), ({"eps": 0}, "eps"),
    ({"taylor_batches": 0}, "taylor_batches"), ({"max_spread": 0.5}, "max_spread"),
])
def test_bad_options_are_rejected(options, match):
    with pytest.raises(ValueError, match=match):
        build_method("mrpf", **options)
