import pytest
import torch

from advprune.models import build_model
from advprune.models.view import AttackView


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18", "vgg16_bn", "wrn_28_4"])
def test_folded_view_computes_the_eval_model_and_its_input_gradient(arch):
    torch.manual_seed(0)
    model = build_model(arch, 10, 3, (16, 16), width=4)
    model(torch.rand(32, 3, 16, 16))  # train-mode pass: non-trivial running statistics
    folded = AttackView(model)
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
    folded = AttackView(model)
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
    AttackView(model).refresh()
    after_building = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after_building, torch.rand(3))


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_the_views_max_pooling_is_bit_identical_and_keeps_the_layout(memory_format):
    from advprune.models.view import ChannelsLastMaxPool2d

    x = torch.randn(16, 8, 9, 9).relu().contiguous(memory_format=memory_format).requires_grad_()
    with torch.no_grad():
        x[:, :, :3, :3] = 1.0  # ties inside windows: the same index must win
    for options in [{"kernel_size": 2}, {"kernel_size": 3, "stride": 2, "padding": 1}]:
        plain, fast = torch.nn.MaxPool2d(**options)(x), ChannelsLastMaxPool2d(**options)(x)
        assert torch.equal(plain, fast) and fast.is_contiguous(memory_format=memory_format)
        g = torch.randn_like(plain)
        assert torch.equal(torch.autograd.grad(plain, x, g)[0], torch.autograd.grad(fast, x, g)[0])
    model = build_model("small_cnn", 10, 1, (8, 8), width=4)
    view = AttackView(model).refresh()
    assert sum(isinstance(m, ChannelsLastMaxPool2d) for m in view.modules()) == 2
    # unfolded, the view is the eval-mode model bit for bit, and still pools on the fast kernel
    unfolded = AttackView(model, fold_batchnorm=False)
    assert not unfolded.pairs and sum(isinstance(m, ChannelsLastMaxPool2d) for m in unfolded.view.modules()) == 2
    x = torch.rand(32, 1, 8, 8)
    assert torch.equal(unfolded.refresh()(x), model.eval()(x))
