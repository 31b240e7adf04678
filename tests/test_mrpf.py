import copy

import pandas as pd
import pytest
import torch

from advprune.attacks.pgd import PGD
from advprune.data import load_split
from advprune.entry import write_csv
from advprune.models import build_model
from advprune.pruning import PruneContext, build_method, prunable_weights
from advprune.pruning._structured import channel_groups, channel_importance, keep_for_ratios, masked_equivalent, structured_cost
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
    method = build_method("mrpf", min_ratio=0.1, max_ratio=0.6)
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
    ({"taylor_batches": 0}, "taylor_batches"),
])
def test_bad_options_are_rejected(options, match):
    with pytest.raises(ValueError, match=match):
        build_method("mrpf", **options)
