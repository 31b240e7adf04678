import pytest
import torch

from advprune.attacks.fused import FoldedBatchNorm
from advprune.models import build_model


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18", "vgg16_bn", "wrn_28_4"])
def test_folded_view_computes_the_eval_model_and_its_input_gradient(arch):
    torch.manual_seed(0)
    model = build_model(arch, 10, 3, (16, 16), width=4)
    model(torch.rand(32, 3, 16, 16))  # train-mode pass: non-trivial running statistics
    folded = FoldedBatchNorm(model)
    assert folded.pairs, "no conv-BN pair was folded"
    view = folded.refresh()
    model.eval()
    x = torch.rand(8, 3, 16, 16, requires_grad=True)
    (g_model,) = torch.autograd.grad(model(x).square().sum(), x)
    (g_view,) = torch.autograd.grad(view(x).square().sum(), x)
    assert torch.allclose(model(x), view(x), atol=1e-5)
    assert torch.allclose(g_model, g_view, atol=1e-4, rtol=1e-3)


def test_refresh_follows_weight_updates_and_leaves_the_model_alone():
    model = build_model("small_cnn", 10, 1, (8, 8), width=4)
    folded = FoldedBatchNorm(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[0].weight.mul_(2.0)  # an optimiser step
    view = folded.refresh()
    model.eval()
    x = torch.rand(4, 1, 8, 8)
    assert torch.allclose(model(x), view(x), atol=1e-5)
    assert torch.equal(model[0].weight, before["0.weight"] * 2.0)
    assert all(p.requires_grad for p in model.parameters())


def test_evaluation_with_and_without_folding_agrees(digits_dir):
    from advprune.data import load_split
    from advprune.evaluation import robustness

    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1, (8, 8), width=4)
    split = load_split(digits_dir, "train", n=256)
    for x, _ in split.batches(64):
        model(x)  # running statistics
    test = load_split(digits_dir, "test", n=40)
    pgd, aa = {"steps": 5, "restarts": 1, "step_size": 0.03}, {"version": "standard", "seed": 0}
    folded = robustness(model, test, 10, 0.05, "Linf", pgd, aa, 64, fold_batchnorm=True)
    plain = robustness(model, test, 10, 0.05, "Linf", pgd, aa, 64, fold_batchnorm=False)
    assert folded["clean_acc"] == plain["clean_acc"]
    assert abs(folded["pgd_acc"] - plain["pgd_acc"]) <= 1 / 40 and abs(folded["autoattack_acc"] - plain["autoattack_acc"]) <= 1 / 40


def test_building_the_view_draws_no_random_numbers():
    # Training builds the view at its first attack; a resumed run does so epochs later than an uninterrupted one.
    model = build_model("resnet18", 10, 1, (8, 8), width=4)
    torch.manual_seed(0)
    FoldedBatchNorm(model).refresh()
    after_building = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after_building, torch.rand(3))
