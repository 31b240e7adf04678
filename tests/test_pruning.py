import pytest
import torch

from advprune.models import build_model
from advprune.models.weights import layer_sparsity, prunable_weights
from advprune.pruning import PruneContext, build_method, list_methods, masks_from_scores
from advprune.training import apply_masks


def _model():
    torch.manual_seed(0)
    return build_model("resnet18", 10, 1, (8, 8), width=4)


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("spec", [{"method": "lwm", "scope": "layer"}, {"method": "lwm", "scope": "global"}, {"method": "random"}])
def test_methods_reach_the_target_sparsity(spec, sparsity):
    model = _model()
    options = dict(spec)
    result = build_method(options.pop("method"), **options).prune(model, sparsity, PruneContext())
    apply_masks(model, result.masks)
    rows = layer_sparsity(model)
    measured = sum(r["sparsity"] * r["n_params"] for r in rows) / sum(r["n_params"] for r in rows)
    assert abs(measured - sparsity) < 0.005
    if spec.get("scope", "layer") == "layer":  # every layer at the target, not just the total
        assert all(abs(r["sparsity"] - sparsity) <= 1 / r["n_params"] + 1e-9 for r in rows)


def test_lwm_keeps_the_largest_magnitudes_per_layer_and_globally():
    weights = {"a": torch.tensor([0.1, -5.0, 0.3, 2.0]), "b": torch.tensor([10.0, -0.2, 0.05, 3.0])}
    layer = masks_from_scores({k: v.abs() for k, v in weights.items()}, 0.5, "layer")
    assert layer["a"].tolist() == [False, True, False, True] and layer["b"].tolist() == [True, False, False, True]
    glob = masks_from_scores({k: v.abs() for k, v in weights.items()}, 0.5, "global")
    assert glob["a"].tolist() == [False, True, False, True] and glob["b"].tolist() == [True, False, False, True]
    glob = masks_from_scores({k: v.abs() for k, v in weights.items()}, 0.75, "global")
    assert glob["a"].tolist() == [False, True, False, False] and glob["b"].tolist() == [True, False, False, False]


def test_first_and_last_layers_can_stay_dense():
    model = _model()
    names = list(prunable_weights(model))
    inner = prunable_weights(model, include_first_last=False)
    assert names[0] not in inner and names[-1] not in inner and len(inner) == len(names) - 2
    result = build_method("lwm").prune(model, 0.9, PruneContext(include_first_last=False))
    assert set(result.masks) == set(inner)


def test_random_pruning_depends_on_the_seed_only():
    a = build_method("random").prune(_model(), 0.5, PruneContext(seed=1)).masks
    b = build_method("random").prune(_model(), 0.5, PruneContext(seed=1)).masks
    c = build_method("random").prune(_model(), 0.5, PruneContext(seed=2)).masks
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_registry_rejects_unknown_methods_and_options():
    assert {"lwm", "random"} <= set(list_methods())
    with pytest.raises(KeyError, match="unknown pruning method 'nope'"):
        build_method("nope")
    with pytest.raises(ValueError, match="scope"):
        build_method("lwm", scope="sideways")


def test_each_method_lives_in_the_module_named_after_it():
    # The workflow hashes advprune/pruning/<method>.py to re-run exactly that method's jobs when it changes.
    from advprune.pruning import _METHODS

    list_methods()
    assert all(cls.__module__ == f"advprune.pruning.{name}" for name, cls in _METHODS.items())
