import copy
import inspect

import pytest
import torch
import yaml
from conftest import REPO, prune_context, small_model

from advprune.models.weights import layer_sparsity, prunable_weights
from advprune.pruning import PruneContext, build_method, masks_from_scores
from advprune.pruning.lwm import LWM
from advprune.training import apply_masks


class RecordingContext(PruneContext):
    """A real context that also keeps what each fine-tuning round started from and ended with."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.rounds = []

    def fit(self, model, objective, settings, phase, masks=None, **options):
        curve = super().fit(model, objective, settings, phase, masks=masks, **options)
        self.rounds.append({"phase": phase, "objective": objective.name, "masks": {k: v.clone() for k, v in masks.items()},
                            "weights": {k: w.detach().clone() for k, w in prunable_weights(model).items()}})
        return curve


def _context(digits_dir, **kwargs):
    return prune_context(digits_dir, n_train=128, seed=3, **kwargs)


def test_three_rounds_reach_the_target_and_pruned_weights_never_come_back(digits_dir):
    model, target = small_model(), 0.9
    context = RecordingContext(**_context(digits_dir).__dict__)
    method = build_method("lwm", iterations=3, finetune_epochs=2, batch_size=64, objective="natural")
    result = method.prune(model, target, context)

    assert result.info["schedule"] == pytest.approx([1 - 0.1 ** (1 / 3), 1 - 0.1 ** (2 / 3), 0.9])
    assert [r["phase"] for r in context.rounds] == ["round1", "round2"] == list(result.info["curves"])
    assert all(r["objective"] == "natural" for r in context.rounds)  # the fine-tuning objective, not the pretraining one
    assert all(len(rows) == 2 and 0 <= rows[-1]["val_clean_acc"] <= 1 for rows in result.info["curves"].values())
    report = result.info["convergence"]
    assert report["converged"] and set(report["checks"]) == {"step1_sparsity", "step2_sparsity", "step3_sparsity", "rounds_completed"}
    assert [report["checks"][f"step{k}_sparsity"]["target"] for k in (1, 2, 3)] == result.info["schedule"]
    assert report["checks"]["rounds_completed"] == {"value": 2, "target": 2, "ok": True}
    steps = [r["masks"] for r in context.rounds] + [result.masks]
    for name in result.masks:
        for before, after in zip(steps, steps[1:]):
            assert not (after[name] & ~before[name]).any(), f"{name}: a pruned weight came back"
        for r in context.rounds:  # fine-tuning kept every pruned weight at exactly zero
            assert (r["weights"][name][~r["masks"][name]] == 0).all()
    for step, s in zip(steps, result.info["schedule"]):  # every round at its own sparsity, per layer
        assert all(int((~m).sum()) == round(s * m.numel()) for m in step.values())

    apply_masks(model, result.masks)
    rows = layer_sparsity(model)
    assert abs(sum(r["sparsity"] * r["n_params"] for r in rows) / sum(r["n_params"] for r in rows) - target) < 0.005
    # The rounds trained the surviving weights: the final ranking is not the one-shot ranking of the dense model.
    dense = masks_from_scores({n: w.detach().abs() for n, w in prunable_weights(small_model()).items()}, target)
    assert any(not torch.equal(dense[n], result.masks[n]) for n in dense)


def test_global_scope_meets_the_total_count_and_linear_schedule(digits_dir):
    model = small_model()
    method = build_method("lwm", scope="global", iterations=2, schedule="linear", finetune_epochs=1, batch_size=64)
    result = method.prune(model, 0.8, _context(digits_dir))
    assert result.info["schedule"] == pytest.approx([0.4, 0.8])
    total = sum(m.numel() for m in result.masks.values())
    assert sum(int((~m).sum()) for m in result.masks.values()) == round(0.8 * total)


def test_a_rerun_resumes_every_round_and_gives_the_same_masks(digits_dir, tmp_path):
    prefix = str(tmp_path / "job")
    method = build_method("lwm", iterations=3, finetune_epochs=1, batch_size=64)
    first = method.prune(small_model(), 0.75, _context(digits_dir, resume_prefix=prefix))
    again = RecordingContext(**{**_context(digits_dir, resume_prefix=prefix).__dict__})
    second = method.prune(small_model(), 0.75, again)
    assert all(torch.equal(first.masks[k], second.masks[k]) for k in first.masks)
    assert second.info["curves"] == first.info["curves"]  # resumed from the finished round states, not retrained
    assert len(again.resume_states()) == 2


def test_one_shot_does_not_train_and_is_unchanged():
    model = small_model()
    before = copy.deepcopy(model.state_dict())
    result = build_method("lwm").prune(model, 0.9, PruneContext())  # no data: any training would fail
    expected = masks_from_scores({n: w.detach().abs() for n, w in prunable_weights(model).items()}, 0.9, "layer")
    assert result.info["scope"] == "layer" and result.info["convergence"]["converged"]
    assert result.info["convergence"]["checks"] == {"step1_sparsity": {"value": pytest.approx(0.9, abs=0.005), "target": 0.9, "ok": True}}
    assert all(torch.equal(result.masks[k], expected[k]) for k in expected)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_step_that_misses_its_sparsity_or_a_short_round_is_not_converged():
    method = build_method("lwm", iterations=2, finetune_epochs=2)
    masks = masks_from_scores({n: w.detach().abs() for n, w in prunable_weights(small_model()).items()}, 0.5)
    hit, missed = method._sparsity_check(masks, 0.5), method._sparsity_check(masks, 0.6)
    assert hit["ok"] and not missed["ok"] and missed["value"] == pytest.approx(0.5, abs=0.01)
    assert not method._convergence([hit, missed], {"round1": [{}, {}]})["converged"]
    short = method._convergence([hit, hit], {"round1": [{}]})  # a round that ran 1 of its 2 epochs
    assert not short["converged"] and short["checks"]["rounds_completed"] == {"value": 0, "target": 1, "ok": False}
    assert "0 of 1 fine-tuning rounds" in short["summary"]


@pytest.mark.parametrize("options, match", [
    ({"iterations": 0}, "iterations"), ({"schedule": "cubic"}, "schedule"), ({"finetune_epochs": 0}, "finetune_epochs"),
    ({"objective": "hinge"}, "objective"), ({"lr": 0}, "lr"), ({"lr_schedule": "step"}, "lr_schedule"),
    ({"batchnorm": "frozen"}, "batchnorm"),
])
def test_bad_options_are_rejected(options, match):
    with pytest.raises(ValueError, match=match):
        build_method("lwm", **options)


def test_the_schema_defaults_are_the_constructors():
    schema = yaml.safe_load((REPO / "workflow/schemas/methods/lwm.schema.yaml").read_text())["properties"]
    defaults = {k: p.default for k, p in inspect.signature(LWM.__init__).parameters.items() if k != "self"}
    assert {k: v["default"] for k, v in schema.items() if k != "method"} == defaults
