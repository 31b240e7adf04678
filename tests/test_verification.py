import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.optimize import Bounds, LinearConstraint, milp
from torch.nn.utils import parametrize

from advprune.attacks import PGD
from advprune.models import build_model
from advprune.models.view import AttackView
from advprune.models.weights import prunable_weights
from advprune.pruning import masks_from_scores
from advprune.pruning._structured import channel_groups, channel_importance, keep_for_ratios, remove_channels
from advprune.verification import BoundedModel, UnsupportedModel, input_box, margin_bounds, margin_spec, record_fields, verified_accuracy

ARCHS = ["small_cnn", "vgg16_bn", "resnet18", "wrn_28_4"]
EPS = 0.03


def _random_model(arch, width=4, seed=0):
    """Eval-mode network with random weights and random BatchNorm statistics (no trivially dead channels)."""
    torch.manual_seed(seed)
    model = build_model(arch, 10, 1, (8, 8), width=width)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _points(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _margins(model, points, spec):
    with torch.no_grad():
        return torch.stack([(spec @ model(p)[:, :, None]).squeeze(-1) for p in points])


def _assert_within(model, x, y, eps, intermediate="ibp"):
    """Margins at random points and at PGD points in the clipped ball lie within IBP's and CROWN's bounds."""
    bounded = BoundedModel(model)
    lower, upper = input_box(x, eps)
    spec = margin_spec(y, 10)
    g = torch.Generator().manual_seed(2)
    points = [lower + (upper - lower) * torch.rand(x.shape, generator=g) for _ in range(64)]
    points += [lower, upper]  # corners of the box
    torch.manual_seed(3)
    for target in range(10):  # PGD pushing each logit's margin down
        points.append(PGD(eps, eps / 4, 10)(model, x, torch.full_like(y, target))[0])
    seen = _margins(model, points, spec)
    low, high = seen.min(0).values, seen.max(0).values
    tol = 1e-4 * (1 + seen.abs().max())
    ibp_low, ibp_up = bounded.ibp(lower, upper, spec=spec)[1:3]
    crown_low, crown_up = bounded.crown(lower, upper, spec, intermediate=intermediate)
    for name, lo, up in (("ibp", ibp_low, ibp_up), ("crown", crown_low, crown_up)):
        assert (lo <= low + tol).all(), f"{name} lower bound above a reached margin"
        assert (up >= high - tol).all(), f"{name} upper bound below a reached margin"
    return ibp_low, crown_low, low


@pytest.mark.parametrize("arch", ARCHS)
def test_bounds_contain_the_margins_at_random_and_pgd_points_plain_and_folded(arch):
    model = _random_model(arch)
    x, y = _points()
    ibp_low, crown_low, reached = _assert_within(model, x, y, EPS)
    _assert_within(AttackView(model).refresh(), x, y, EPS)  # what the evaluation bounds
    assert (crown_low > ibp_low).float().mean() > 0.5  # not vacuous: CROWN-IBP mostly tighter on these nets


def test_full_crown_is_sound_and_at_least_as_tight_as_ibp():
    model = _random_model("small_cnn")
    x, y = _points()
    ibp_low, crown_low, reached = _assert_within(model, x, y, EPS, intermediate="crown")
    assert (crown_low >= ibp_low - 1e-5).all()
    lower, upper = input_box(x, EPS)
    crown_ibp_low = BoundedModel(model).crown(lower, upper, margin_spec(y, 10), need_upper=False)[0]
    assert (crown_low >= crown_ibp_low - 1e-5).all()  # CROWN intermediate bounds only tighten CROWN-IBP's


def test_max_pooling_that_drops_a_row_and_column_is_bounded_soundly():
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1, (7, 7), width=4).eval()  # 7 -> 3: the pools skip the last row/column
    x, y = torch.rand(4, 1, 7, 7), torch.randint(0, 10, (4,))
    _assert_within(model, x, y, EPS, intermediate="crown")


def test_masked_parametrized_and_physically_smaller_models_are_bounded_soundly():
    x, y = _points()
    masked = _random_model("resnet18")
    masks = masks_from_scores({k: w.detach().abs() for k, w in prunable_weights(masked).items()}, 0.8)
    params = dict(masked.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)
    _assert_within(masked, x, y, EPS)

    class Mask(nn.Module):
        def __init__(self, mask):
            super().__init__()
            self.mask = mask

        def forward(self, w):
            return w * self.mask

    parametrized = _random_model("resnet18")
    for name, mask in masks.items():
        parametrize.register_parametrization(parametrized.get_submodule(name.removesuffix(".weight")), "weight", Mask(mask))
    lower, upper = input_box(x, EPS)
    spec = margin_spec(y, 10)
    assert torch.allclose(BoundedModel(parametrized).crown(lower, upper, spec)[0], BoundedModel(masked).crown(lower, upper, spec)[0], atol=1e-5)

    dense = _random_model("resnet18")
    groups = channel_groups(dense, x[:1], include_first_last=True)
    small = remove_channels(dense, x[:1], keep_for_ratios(groups, channel_importance(dense, groups, "l1"), {g.name: 0.5 for g in groups}))
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in dense.parameters())
    _assert_within(small.eval(), x, y, EPS)


def test_a_single_linear_layer_is_bounded_exactly():
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    x = torch.rand(3, 6)
    lower, upper = input_box(x, 0.05)
    bounded = BoundedModel(nn.Sequential(layer))
    # exact: each output is extremised at the box corner picked by its weights' signs
    w, b = layer.weight.detach(), layer.bias.detach()
    exact_low = (torch.where(w > 0, lower[:, None], upper[:, None]) * w).sum(-1) + b
    exact_up = (torch.where(w > 0, upper[:, None], lower[:, None]) * w).sum(-1) + b
    with torch.no_grad():
        ibp = bounded.ibp(lower, upper)[1:3]
        crown = bounded.crown(lower, upper)
    for lo, up in (ibp, crown):
        torch.testing.assert_close(lo, exact_low)
        torch.testing.assert_close(up, exact_up)


def _milp_min_margins(net: nn.Sequential, x_low: np.ndarray, x_up: np.ndarray, spec: np.ndarray, pre_bounds) -> np.ndarray:
    """Exact min over the box of spec @ net(x) for Linear-ReLU-...-Linear, by a big-M MILP (bounds: valid
    pre-activation bounds, here IBP's widened slightly)."""
    linears = [m for m in net if isinstance(m, nn.Linear)]
    sizes = [linears[0].in_features] + [m.out_features for m in linears[:-1]]
    # variables: x, then per hidden layer (z, a, d)
    offsets, n = [0], sizes[0]
    for s in sizes[1:]:
        offsets.append(n)
        n += 3 * s
    rows, lo_b, up_b = [], [], []
    var_low, var_up = np.full(n, -np.inf), np.full(n, np.inf)
    integrality = np.zeros(n)
    var_low[: sizes[0]], var_up[: sizes[0]] = x_low, x_up
    prev = np.arange(sizes[0])
    for k, layer in enumerate(linears[:-1]):
        w, b = layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()
        s, base = sizes[k + 1], offsets[k + 1]
        z, a, d = base + np.arange(s), base + s + np.arange(s), base + 2 * s + np.arange(s)
        l, u = pre_bounds[k]
        var_low[z], var_up[z] = l, u
        var_low[a], var_up[a] = 0, np.maximum(u, 0)
        var_low[d], var_up[d] = 0, 1
        integrality[d] = 1
        for i in range(s):
            row = np.zeros(n)
            row[prev] = w[i]
            row[z[i]] = -1  # z = W prev + b
            rows.append(row), lo_b.append(-b[i]), up_b.append(-b[i])
            for coeffs, low, high in (({a[i]: 1, z[i]: -1}, 0, np.inf),  # a >= z
                                      ({a[i]: 1, z[i]: -1, d[i]: -l[i]}, -np.inf, -l[i]),  # a <= z - l (1 - d)
                                      ({a[i]: 1, d[i]: -u[i]}, -np.inf, 0)):  # a <= u d
                row = np.zeros(n)
                for j, c in coeffs.items():
                    row[j] = c
                rows.append(row), lo_b.append(low), up_b.append(high)
        prev = a
    w, b = linears[-1].weight.detach().double().numpy(), linears[-1].bias.detach().double().numpy()
    out = []
    for c in spec:
        objective = np.zeros(n)
        objective[prev] = c @ w
        res = milp(objective, constraints=LinearConstraint(np.array(rows), lo_b, up_b), integrality=integrality, bounds=Bounds(var_low, var_up))
        assert res.status == 0, res.message
        out.append(res.fun + c @ b)
    return np.array(out)


def test_bounds_agree_with_an_exact_milp_on_a_tiny_relu_network():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.rand(12, 4)
    with torch.no_grad():
        y = net(x).argmax(1)
    eps = 0.05
    lower, upper = input_box(x, eps)
    spec = margin_spec(y, 3)
    bounded = BoundedModel(net)
    with torch.no_grad():
        bounds = bounded.ibp(lower, upper)[0]
        ours = {"ibp": margin_bounds(bounded, x, y, eps, "ibp", 3),
                "crown_ibp": margin_bounds(bounded, x, y, eps, "crown", 3),
                "crown": margin_bounds(bounded, x, y, eps, "crown", 3, crown_intermediate="crown")}
    certified_any = 0
    for i in range(len(x)):
        pre = [(bounds[k][0][i].double().numpy() - 1e-3, bounds[k][1][i].double().numpy() + 1e-3) for k in (1, 3)]
        exact = _milp_min_margins(net, lower[i].double().numpy(), upper[i].double().numpy(), spec[i].double().numpy(), pre)
        for name, low in ours.items():
            assert (low[i].double().numpy() <= exact + 1e-4).all(), (name, i, low[i], exact)
            if (low[i] > 0).all():
                assert (exact > 0).all()
                certified_any += 1
        assert (ours["crown"][i].double().numpy() >= ours["ibp"][i].double().numpy() - 1e-5).all()
    assert certified_any > 0  # the comparison is not vacuous


def test_verified_accuracy_certifies_only_correct_points_and_reports_each_method():
    model = _random_model("small_cnn")
    x, _ = _points(n=20)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:5] = (y[:5] + 1) % 10  # misclassified points can never be certified
    result = verified_accuracy(model, x, y, 0.002, batch_size=7)
    assert set(result.certified) == {"ibp", "crown"} and set(result.seconds) == {"ibp", "crown"}
    assert not result.either[:5].any()
    assert result.either[5:].any()
    assert torch.equal(result.either, result.certified["ibp"] | result.certified["crown"])
    smaller = verified_accuracy(model, x, y, 0.2, batch_size=7)
    assert (smaller.either <= result.either).all()  # a larger ball certifies a subset


def test_unsupported_modules_are_named():
    with pytest.raises(UnsupportedModel, match="Sigmoid"):
        BoundedModel(nn.Sequential(nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 2)))

    class Gate(nn.Module):
        def forward(self, x):
            return x * x.sum()

    with pytest.raises(UnsupportedModel, match="sum"):
        BoundedModel(Gate())


def test_records_say_not_computed_with_null_accuracies_and_a_log_line(caplog):
    x, y = _points()
    settings = {"methods": ["ibp", "crown"], "crown_intermediate": "ibp", "batch_size": 4}
    fields, certified = record_fields(_random_model("small_cnn"), x, y, EPS, settings)
    assert fields["verification"]["status"] == "computed" and len(certified) == len(y)
    assert set(fields["verification_seconds"]) == {"ibp", "crown", "total"}
    for model, settings, reason in ((_random_model("small_cnn"), None, "evaluate.verify is null"),
                                    (nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Tanh()), settings, "Tanh")):
        caplog.clear()
        fields, certified = record_fields(model, x, y, EPS, settings)
        assert certified is None and fields["verification"]["status"] == "not computed" and reason in fields["verification"]["reason"]
        assert fields["verified_acc"] is None and fields["verified_ibp_acc"] is None and fields["verified_crown_acc"] is None
        assert any("not computed" in r.message and reason in r.message for r in caplog.records)
