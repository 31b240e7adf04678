import torch
import torch.nn as nn

from advprune.attacks import PGD


def _linear_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))


def test_pgd_stays_in_the_eps_ball_and_the_image_range():
    model, x = _linear_model(), torch.rand(32, 1, 4, 4)
    y = model(x).argmax(1)
    x_adv = PGD(0.1, 0.03, 10).perturb(model, x, y)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_pgd_breaks_a_linear_model_that_random_noise_does_not():
    model, x = _linear_model(), torch.rand(256, 1, 4, 4)
    y = model(x).argmax(1)
    _, robust = PGD(0.2, 0.05, 20)(model, x, y)
    noise = (x + 0.2 * torch.sign(torch.randn_like(x))).clamp(0, 1)
    noise_acc = (model(noise).argmax(1) == y).float().mean()
    assert robust.float().mean() < noise_acc - 0.2


def test_clean_errors_count_as_not_robust_and_parameters_get_no_gradient():
    model, x = _linear_model(), torch.rand(64, 1, 4, 4)
    y = (model(x).argmax(1) + 1) % 3  # every point misclassified
    _, robust = PGD(0.01, 0.01, 2)(model, x, y)
    assert not robust.any()
    assert all(p.grad is None for p in model.parameters())


def test_more_restarts_never_raise_robust_accuracy():
    model, x = _linear_model(), torch.rand(256, 1, 4, 4)
    y = model(x).argmax(1)
    torch.manual_seed(1)
    one = PGD(0.05, 0.02, 3, restarts=1)(model, x, y)[1].float().mean()
    torch.manual_seed(1)
    five = PGD(0.05, 0.02, 3, restarts=5)(model, x, y)[1].float().mean()
    assert five <= one
