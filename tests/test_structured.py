import json

import pytest
import torch
import torch.nn as nn
import yaml
from conftest import REPO, load_script

from advprune.checkpoint import load_model, load_torch, save_model
from advprune.config import evaluate_params, finetune_params, prune_params, validate
from advprune.data import load_split
from advprune.evaluation import model_statistics
from advprune.models import build_model
from advprune.models.weights import layer_sparsity, prunable_weights
from advprune.pruning import PruneContext, build_method
from advprune.pruning._structured import (
    channel_groups,
    channel_importance,
    keep_for_ratios,
    masked_equivalent,
    ratios_for_budget,
    remove_channels,
    structured_cost,
)

META = {"n_classes": 10, "channels": 1, "image_size": [8, 8]}
X1 = torch.zeros(1, 1, 8, 8)


def _model(arch, width, seed=0):
    """A network with random weights and random BatchNorm statistics, so that no channel is trivially zero."""
    torch.manual_seed(seed)
    model = build_model(arch, 10, 1, (8, 8), width=width)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.normal_()
                m.bias.normal_()
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _random_keep(groups, generator):
    """About half of each group's channels, at least one kept."""
    keep = {}
    for g in groups:
        k = torch.rand(g.n_channels, generator=generator) < 0.5
        k[torch.randint(g.n_channels, (1,), generator=generator)] = True
        keep[g.name] = k
    return keep


@pytest.mark.parametrize("arch,width", [("resnet18", 4), ("resnet18", 8), ("small_cnn", 4), ("vgg16_bn", 2), ("wrn_28_4", 2), ("mobilevit_xxs", 4)])
def test_the_smaller_network_computes_what_the_masked_original_computes(arch, width):
    model = _model(arch, width)
    groups = channel_groups(model, X1)
    keep = _random_keep(groups, torch.Generator().manual_seed(1))
    small = remove_channels(model, X1, keep)
    masked = masked_equivalent(model, X1, keep)

    # a residual stream (or a depthwise conv, or an attention head's query/key/value) is one group coupling
    # several layers' outputs; it lost channels too
    residual = [g for g in groups if len(g.outputs) > 1]
    assert (len(residual) > 0) == (arch in ("resnet18", "wrn_28_4", "mobilevit_xxs"))
    lost = [g for g in residual if not keep[g.name].all()]
    if arch == "mobilevit_xxs":  # some of its coupled groups have 1-2 channels, which the random keep may leave whole
        assert any(".heads." in g.name for g in lost) and any(len(g.outputs) == 2 and "expand" in g.name for g in lost)
    else:
        assert lost == residual
    for g in groups:  # every coupled layer shrank to the kept channels
        kept = int(keep[g.name].sum())
        assert all(small.get_submodule(name).weight.shape[0] == kept for name in g.outputs + g.norms)
    assert structured_cost(small, X1)["params"] < structured_cost(model, X1)["params"]
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())

    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference, out, dense = masked(x), small(x), model(x)
    assert out.shape == (16, 10)
    assert torch.allclose(out, reference, atol=1e-5, rtol=1e-5), (out - reference).abs().max()
    assert not torch.allclose(dense, reference, atol=1e-3)  # the comparison can fail: removal changed the function
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), _model(arch, width).state_dict().values()))  # original untouched


def test_the_classifier_and_without_first_last_the_first_group_keep_their_channels():
    model = _model("resnet18", 4)
    names = [g.name for g in channel_groups(model, X1)]
    assert "linear" not in names and names[0] == "conv1"
    groups = channel_groups(model, X1, include_first_last=False)
    assert "conv1" not in [g.name for g in groups]
    assert not any("layer1.0.conv2" in g.outputs for g in groups)  # the stem's residual stream stays whole
    small = remove_channels(model, X1, keep_for_ratios(groups, channel_importance(model, groups, "l1"), {g.name: 0.5 for g in groups}))
    assert small.conv1.weight.shape == model.conv1.weight.shape and small.linear.out_features == 10
    with pytest.raises(ValueError, match="removes every channel"):
        remove_channels(model, X1, {"conv1": torch.zeros(4, dtype=torch.bool)})


def test_magnitude_importance_is_the_filter_norm_summed_over_coupled_filters_and_taylor_uses_the_loss():
    model = _model("resnet18", 4)
    groups = {g.name: g for g in channel_groups(model, X1)}
    l1 = channel_importance(model, list(groups.values()), "l1")
    assert torch.allclose(l1["layer1.0.conv1"], model.layer1[0].conv1.weight.abs().sum((1, 2, 3)))
    stream = groups["layer2.0.conv2"]
    assert set(stream.outputs) == {"layer2.0.conv2", "layer2.0.shortcut.0", "layer2.1.conv2"}
    expected = sum(model.get_submodule(n).weight.abs().sum((1, 2, 3)) for n in stream.outputs)
    assert torch.allclose(l1[stream.name], expected)
    l2 = channel_importance(model, [stream], "l2")[stream.name]
    assert torch.allclose(l2, sum(model.get_submodule(n).weight.pow(2).sum((1, 2, 3)) for n in stream.outputs).sqrt())

    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    loss = lambda m: nn.functional.cross_entropy(m(x), y)  # noqa: E731
    taylor = channel_importance(model, [stream], "taylor", grads=loss)[stream.name]
    model.zero_grad()
    loss(model).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert torch.allclose(taylor, channel_importance(model, [stream], "taylor", grads=grads)[stream.name])
    assert (taylor >= 0).all() and taylor.sum() > 0


def test_mobilevit_attention_is_pruned_by_head_dimension_and_its_embedding_width_is_kept():
    model = _model("mobilevit_xxs", 4)
    groups = {g.name: g for g in channel_groups(model, X1)}
    head = "layer3.1.transformer.0.attn.heads.1"
    g = groups[f"{head}.query"]  # query, key and value channel i of one head, and the projection's input i
    assert g.outputs == [f"{head}.query", f"{head}.key", f"{head}.value"]
    assert g.inputs == {"layer3.1.transformer.0.attn.proj": g.n_channels}
    assert groups["layer3.1.transformer.0.fc1"].inputs == {"layer3.1.transformer.0.fc2": 32}  # the MLP's hidden units
    assert "layer3.0.depthwise.0" in groups["layer3.0.expand.0"].outputs
    # LayerNorm's statistics span the embedding width: no group writes it
    assert not any(name.endswith(("to_tokens", "attn.proj", "fc2")) for g in groups.values() for name in g.outputs)


@pytest.mark.parametrize("arch,width", [("resnet18", 4), ("small_cnn", 8), ("vgg16_bn", 2), ("wrn_28_4", 2), ("mobilevit_xxs", 4)])
def test_structured_checkpoints_round_trip_through_the_dense_architecture(tmp_path, arch, width):
    model = _model(arch, width)
    groups = channel_groups(model, X1)
    small = remove_channels(model, X1, _random_keep(groups, torch.Generator().manual_seed(3)))
    save_model(tmp_path / "small.pt", small, arch, {"width": width}, META)
    save_model(tmp_path / "dense.pt", model, arch, {"width": width}, META)
    assert load_torch(tmp_path / "small.pt")["structured"] and not load_torch(tmp_path / "dense.pt")["structured"]

    loaded, ckpt = load_model(tmp_path / "small.pt")
    assert ckpt["masks"] is None
    assert all(torch.equal(a, b) for a, b in zip(small.state_dict().values(), loaded.state_dict().values()))
    for (name, a), b in zip(small.named_modules(), loaded.modules()):  # channel counts follow the shapes
        for attr in ("in_channels", "out_channels", "in_features", "out_features", "num_features"):
            assert getattr(a, attr, None) == getattr(b, attr, None), (name, attr)
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(small(x), loaded.eval()(x))
    assert (tmp_path / "small.pt").stat().st_size < (tmp_path / "dense.pt").stat().st_size


@pytest.fixture(scope="module")
def train_split(digits_dir):
    return load_split(digits_dir, "train", "cpu")


def _context(train_split, include_first_last=True):
    return PruneContext(train=train_split, include_first_last=include_first_last, seed=0)


@pytest.mark.parametrize("target", [0.5, 0.75, 0.9])
def test_l1_filter_removes_the_target_fraction_of_weights_at_a_uniform_ratio(train_split, target, capsys):
    model = _model("resnet18", 16)
    result = build_method("l1_filter").prune(model, target, _context(train_split))
    layers = layer_sparsity(result.model, dense=model)
    measured = sum(r["sparsity"] * r["n_params"] for r in layers) / sum(r["n_params"] for r in layers)
    with capsys.disabled():
        print(f"\nl1_filter resnet18 width 16: target {target}, measured {measured:.4f}")
    assert abs(measured - target) < 0.005
    assert result.masks is None and build_method("l1_filter").structured
    assert len(set(result.info["ratios"].values())) == 1  # one ratio for every group
    # Li et al.: the kept filters of a plain conv are its largest-L1 ones
    kept, total = result.info["channels"]["layer3.1.conv1"]
    assert total == 64 and result.model.layer3[1].conv1.out_channels == kept
    l1 = model.layer3[1].conv1.weight.abs().sum((1, 2, 3))
    top = l1.argsort(descending=True)[:kept].sort().values
    assert torch.equal(result.model.layer3[1].bn1.running_mean, model.layer3[1].bn1.running_mean[top])  # BN of those filters, in order


def test_l1_filter_without_first_last_counts_only_the_prunable_layers(train_split):
    model = _model("resnet18", 16)
    result = build_method("l1_filter").prune(model, 0.5, _context(train_split, include_first_last=False))
    layers = layer_sparsity(result.model, include_first_last=False, dense=model)
    measured = sum(r["sparsity"] * r["n_params"] for r in layers) / sum(r["n_params"] for r in layers)
    assert abs(measured - 0.5) < 0.005
    assert result.model.conv1.weight.shape == model.conv1.weight.shape
    with pytest.raises(ValueError, match="criterion"):
        build_method("l1_filter", criterion="l3")


def test_ratios_for_budget_meets_a_flops_budget_with_ratios_proportional_to_the_weights():
    model = _model("resnet18", 16)
    groups = channel_groups(model, X1)
    weights = {g.name: 1.0 + i % 3 for i, g in enumerate(groups)}  # unequal: e.g. inverse sensitivities
    allocation = ratios_for_budget(model, X1, groups, weights, 0.75, measure="flops", max_ratio=0.7)
    ratios = allocation.ratios
    small = remove_channels(model, X1, keep_for_ratios(groups, channel_importance(model, groups, "l1"), ratios))
    removed = 1 - structured_cost(small, X1)["flops"] / structured_cost(model, X1)["flops"]
    assert abs(removed - 0.75) < 0.005, removed
    scale = {ratios[g.name] / weights[g.name] for g in groups if ratios[g.name] < 0.7}
    assert max(scale) - min(scale) < 1e-9  # unclamped ratios share one scale
    assert {ratios[g.name] for g in groups if weights[g.name] == 3.0} == {0.7}  # the largest weights hit the cap

    capped = ratios_for_budget(model, X1, groups, weights, 0.99, max_ratio=0.5, min_ratio=0.1).ratios
    assert set(capped.values()) == {0.5}  # out of reach: everything at its cap
    with pytest.raises(ValueError, match="measure"):
        ratios_for_budget(model, X1, groups, weights, 0.5, measure="latency")



def test_prune_finetune_and_evaluate_scripts_handle_a_structured_model(digits_dir, tmp_path):
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["device"] = "cpu"
    config["prune"]["methods"] = {"l1_filter": {}}
    config["finetune"].update(epochs=1, batch_size=256, schedule="cosine")  # hydra_cosine's only epoch is at lr 0
    config["evaluate"].update(n_examples=8, batch_size=8, pgd={"steps": 2, "restarts": 1, "step_size": 0.05},
                              latency={"batch_size": 16, "warmup": 1, "repeats": 3},
                              hofmn={"steps": 2, "trials": 2, "tune_steps": 2, "tune_batch": 8, "seed": 0})
    config = validate({**config, "studies": {}})
    dense = _model("resnet18", 4)
    save_model(tmp_path / "dense.pt", dense, "resnet18", {"width": 4}, META)

    load_script("prune").main(str(tmp_path / "dense.pt"), digits_dir, 0.5, 0, prune_params(config, "l1_filter", dataset="digits"),
                          str(tmp_path / "p.pt"), str(tmp_path / "p.json"))
    info = json.loads((tmp_path / "p.json").read_text())
    pruned, ckpt = load_model(tmp_path / "p.pt")
    assert ckpt["structured"] and ckpt["masks"] is None
    assert [r["n_params"] for r in info["layers"]] == [w.numel() for w in prunable_weights(dense).values()]
    assert abs(info["sparsity_measured"] - 0.5) < 0.05  # width 4: coarse channel granularity
    assert info["info"]["channels"]["layer4.0.conv1"][1] == 32
    # the method's own convergence report (budget met), not the generic one-shot line prune.py fills in
    assert info["convergence"]["checks"]["reached"] == pytest.approx(info["sparsity_measured"], abs=1e-6)
    assert info["convergence"]["converged"] == (abs(info["sparsity_measured"] - 0.5) <= 0.01) and "convergence" not in info["info"]

    load_script("finetune").main(str(tmp_path / "p.pt"), digits_dir, 0, finetune_params(config, dataset="digits"),
                             str(tmp_path / "f.pt"), str(tmp_path / "f.csv"), str(tmp_path / "f.state.pt"))
    tuned, tuned_ckpt = load_model(tmp_path / "f.pt")
    assert tuned_ckpt["structured"]
    assert [p.shape for p in tuned.parameters()] == [p.shape for p in pruned.parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(tuned.parameters(), pruned.parameters()))  # it trained

    load_script("evaluate").main(str(tmp_path / "f.pt"), digits_dir, "digits", "resnet18", 0, "l1_filter", 0.5, evaluate_params(config),
                             str(tmp_path / "e.json"))
    record = json.loads((tmp_path / "e.json").read_text())
    assert record["sparsity_measured"] == pytest.approx(info["sparsity_measured"], abs=1e-3)  # fine-tuning zeroes nothing
    assert record["flops_effective"] < record["flops_dense"] and record["params_total"] < record["dense_params_total"]
    assert record["dense_params_prunable"] == sum(w.numel() for w in prunable_weights(dense).values())
    assert record["structured"] and record["latency_settings"]["batch_size"] == 16 and record["latency_settings"]["threads"] == 1
    assert record["latency_ms"] > 0 and record["latency_dense_ms"] > 0


def test_model_statistics_of_a_masked_model_are_unchanged_by_the_dense_reference():
    model = _model("small_cnn", 4)
    with torch.no_grad():
        model[3].weight[:2] = 0
    alone = model_statistics(model, (1, 8, 8))
    against_dense = model_statistics(model, (1, 8, 8), dense=build_model("small_cnn", 10, 1, (8, 8), width=4))
    assert alone == against_dense
    assert alone["flops_effective"] < alone["flops_dense"]
