"""Our AutoAttack and its parts, checked against the original (pyautoattack) on a tiny adversarially trained
CNN for scikit-learn's 8x8 digits."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits

import pyautoattack
from advprune.attacks.apgd import apgd_ce, apgd_targeted
from advprune.attacks.autoattack import AutoAttack
from advprune.attacks.fab import fab_targeted
from advprune.attacks.square import square_linf
from advprune.attacks.state import AttackState, Checkpoint
from advprune.checkpoint import load_torch, save_torch

torch.set_num_threads(2)

EPS = 0.15  # FGSM-trained at this eps the CNN keeps 35-40 % robust accuracy: neither trivial nor hopeless
ORDER = ["clean", "apgd-ce", "apgd-t", "fab-t", "square"]


def digits(classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits(n_class=classes)
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[perm], y[perm]


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, epochs: int) -> nn.Module:
    """FGSM with a random start (Wong et al. 2020): seconds on CPU, enough for non-trivial robustness."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(epochs):
        for xb, yb in zip(x.split(64), y.split(64)):
            delta = torch.empty_like(xb).uniform_(-eps, eps).requires_grad_()
            model.eval()
            (grad,) = torch.autograd.grad(F.cross_entropy(model((xb + delta).clamp(0, 1)), yb), delta)
            x_adv = (xb + (delta + 1.25 * eps * grad.sign()).clamp(-eps, eps)).clamp(0, 1).detach()
            model.train()
            opt.zero_grad()
            F.cross_entropy(model(x_adv), yb).backward()
            opt.step()
    model.eval().zero_grad(set_to_none=True)
    return model


@pytest.fixture(scope="module")
def setup():
    x, y = digits()
    torch.manual_seed(0)
    # Dropout makes "attacked in train mode" observable.
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Dropout(0.1), nn.Linear(16 * 4 * 4, 10))
    train(model, x[:1400], y[:1400], EPS, epochs=8)
    return model, x[1400:1600], y[1400:1600]


@pytest.fixture(scope="module")
def ours(setup):
    model, x, y = setup
    return AutoAttack(model, eps=EPS, seed=0)(x, y)


def test_matches_original_autoattack(setup, ours):
    model, x, y = setup
    original = pyautoattack.AutoAttack(model, norm="Linf", eps=EPS, version="standard", seed=0)
    x_orig, _ = original.run_standard_evaluation(x, y, batch_size=500)  # our batch size: the seeds restart per batch
    with torch.no_grad():
        robust_orig = model(x_orig).argmax(1) == y
    assert 0.2 < ours.robust_accuracy < 0.7, "setup too easy or too hard to tell the attacks apart"
    assert torch.equal(ours.robust, robust_orig), (ours.robust_after, robust_orig.float().mean().item())
    # Same settings, seeds and random draws give the same adversarial points (bitwise on CPU; the parts are
    # compared exactly in test_parts_equal_the_original).
    same = ((ours.x_adv - x_orig).flatten(1).abs().amax(1) < 1e-5).float().mean().item()
    assert same >= 0.95, same


def test_hofmn_accuracy_stays_within_its_documented_slack_of_autoattack(setup, ours):
    """HO-FMN (advprune.security) on the points AutoAttack attacked, tuned on 64 points neither trained nor attacked:
    a minimum-norm attack, at eps within tests/test_fmn.py's documented slack of AutoAttack on either side."""
    from advprune.data.arrays import ArraySplit
    from advprune.security.hofmn import record_fields
    from test_fmn import SETTINGS, SLACK_ABOVE, SLACK_BELOW

    model, x, y = setup
    xs, ys = digits()
    split = lambda x, y: ArraySplit((16 * x).round().to(torch.uint8), y, 16)  # noqa: E731 - digits are k/16 exactly
    fields, robust = record_fields(model, split(x, y), split(xs[1600:1664], ys[1600:1664]), EPS, SETTINGS, 512)
    below = max(SLACK_BELOW, 1 / len(y))
    assert -below <= fields["hofmn_acc"] - ours.robust_accuracy <= SLACK_ABOVE, (fields["hofmn_acc"], ours.robust_accuracy)
    assert (ours.robust & ~robust).float().mean() <= below  # points FMN breaks that AutoAttack could not


def test_deterministic_pure_and_in_eval_mode(setup, ours):
    model, x, y = setup
    model.train().zero_grad(set_to_none=True)  # the original's FAB leaves parameter gradients behind
    torch.rand(7)  # another global RNG state than for the first call
    state = torch.get_rng_state()
    try:
        again = AutoAttack(model, eps=EPS, seed=0, log_progress=False)(x, y)
        assert model.training
    finally:
        model.eval()
    assert torch.equal(torch.get_rng_state(), state)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    # Differences mean non-determinism or an attack run in train mode (dropout changes the path).
    assert torch.equal(again.robust, ours.robust)
    assert torch.equal(again.x_adv, ours.x_adv)


@pytest.mark.parametrize("norm, eps", [("Linf", EPS), ("L2", 0.5)])
def test_result_is_valid(setup, ours, norm, eps):
    model, x, y = setup
    result = ours if norm == "Linf" else AutoAttack(model, norm="L2", eps=eps, seed=0, log_progress=False)(x[:30], y[:30])
    x, y = x[: len(result.x_adv)], y[: len(result.x_adv)]
    delta = (result.x_adv - x).flatten(1)
    dist = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
    assert dist.max() <= eps + 1e-5
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert not (result.robust & ~result.clean_correct).any()
    assert list(result.robust_after) == ORDER and list(result.seconds) == ORDER[1:]
    accs = list(result.robust_after.values())
    assert all(a >= b for a, b in zip(accs, accs[1:]))
    assert accs[0] == pytest.approx(result.clean_correct.float().mean().item())
    assert accs[-1] == pytest.approx(result.robust_accuracy)
    assert result.robust_accuracy < accs[0], "nothing broken: the checks below would be vacuous"
    with torch.no_grad():
        correct_adv = model(result.x_adv).argmax(1) == y
    assert torch.equal(correct_adv, result.robust)  # broken points really are misclassified
    assert torch.equal(result.x_adv[result.robust], x[result.robust])


def original_part(name: str, model: nn.Module, norm: str, eps: float, n_targets: int = 9, n_iter: int = 100, n_queries: int = 5000):
    """One part of the original, set up as its standard version runs it (autoattack.py, `_set_version`), or with
    another iteration or query budget."""
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    from pyautoattack.fab_pt import FABAttack_PT
    from pyautoattack.square import SquareAttack

    if name == "apgd-ce":
        return APGDAttack(model, n_restarts=1, n_iter=n_iter, eps=eps, norm=norm, rho=0.75, seed=0, loss="ce")
    if name == "apgd-t":
        return APGDAttack_targeted(model, n_restarts=1, n_iter=n_iter, eps=eps, norm=norm, rho=0.75, seed=0, n_target_classes=n_targets)
    if name == "fab-t":
        return FABAttack_PT(model, n_restarts=1, n_iter=n_iter, eps=eps, norm=norm, seed=0, targeted=True, n_target_classes=n_targets)
    return SquareAttack(model, p_init=0.8, n_queries=n_queries, eps=eps, norm=norm, n_restarts=1, seed=0, resc_schedule=False)


def our_part(name: str, model: nn.Module, norm: str, eps: float, n_targets: int = 9, max_batch: int = 10_000):
    return {
        "apgd-ce": lambda x, y: apgd_ce(model, x, y, eps, norm, 0, max_batch),
        "apgd-t": lambda x, y: apgd_targeted(model, x, y, eps, norm, 0, n_targets, max_batch),
        "fab-t": lambda x, y: fab_targeted(model, x, y, eps, norm, n_targets, max_batch),
        "square": lambda x, y: square_linf(model, x, y, eps, 0),
    }[name]


def both_parts(setup, original, ours):
    """The original part's and ours on the same 40 correctly classified points, each from the same RNG state."""
    model, x, y = setup
    model.requires_grad_(False)
    try:
        with torch.no_grad():
            correct = model(x).argmax(1) == y
        x, y = x[correct][:40], y[correct][:40]
        with torch.random.fork_rng():
            expected = original.perturb(x, y)
            got = ours(x, y)
    finally:
        model.requires_grad_(True)
    return x, y, expected, got


@pytest.mark.parametrize("name, norm, max_batch", [("apgd-ce", "Linf", 7), ("apgd-t", "Linf", 10_000), ("apgd-t", "L2", 50), ("fab-t", "Linf", 10_000),
                                                   ("fab-t", "L2", 50), ("square", "Linf", None)])
def test_parts_equal_the_original(setup, name, norm, max_batch):
    """Each part returns exactly the original's points. The weak model breaks points at several target classes,
    so FAB-T's side-by-side targets must resolve to the first that broke each point; small max_batch splits the
    model calls. Split calls give the same points up to rounding only: CPU convolutions round differently for
    another batch size (measured: 4 of 40 points differ by 3.7e-6 after 100 iterations with chunks of 7)."""
    model, _, _ = setup
    eps = EPS if norm == "Linf" else 0.5
    x, y, expected, got = both_parts(setup, original_part(name, model, norm, eps), our_part(name, model, norm, eps, max_batch=max_batch))
    with torch.no_grad():
        broken = model(got).argmax(1) != y
        broken_by_original = model(expected).argmax(1) != y
    assert 0 < broken.sum() < len(y), "nothing or everything broken: the comparison would be vacuous"
    if max_batch is not None and max_batch < len(y):
        assert torch.equal(broken, broken_by_original)
        assert (got - expected).abs().max() <= 1e-5
    else:
        assert torch.equal(got, expected)


@pytest.mark.parametrize("name", ["apgd-ce", "apgd-t", "fab-t", "square"])
def test_rehearsal_budget_equals_the_original_with_that_budget(setup, name):
    """`version="rehearsal"` (advprune rehearse's smoke test) runs the same parts with 3 iterations and 20 queries:
    each part's budget reaches its loops and schedules exactly as the original's n_iter / n_queries do."""
    from advprune.attacks.autoattack import VERSIONS

    n_iter, n_queries = VERSIONS["rehearsal"]
    model, _, _ = setup
    original = original_part(name, model, "Linf", EPS, n_iter=n_iter, n_queries=n_queries)
    _, _, expected, got = both_parts(setup, original, AutoAttack(model, eps=EPS, seed=0, version="rehearsal", log_progress=False).attacks[name])
    assert torch.equal(got, expected)
    with pytest.raises(ValueError, match="version"):
        AutoAttack(model, eps=EPS, version="quick")


def test_target_classes_with_few_classes(setup):
    x, y = digits(classes=4)
    torch.manual_seed(0)
    model = train(nn.Sequential(nn.Flatten(), nn.Linear(64, 4)), x[:500], y[:500], eps=0.0, epochs=3).requires_grad_(False)
    x, y = x[500:530], y[500:530]
    atk = AutoAttack(model, eps=0.05, n_classes=4, seed=0, log_progress=False)
    assert atk.n_targets == 3  # all 3 other classes, as n_classes - 1
    for name in ["apgd-t", "fab-t"]:
        with torch.random.fork_rng():
            expected = original_part(name, model, "Linf", 0.05, n_targets=3).perturb(x, y)
            assert torch.equal(our_part(name, model, "Linf", 0.05, n_targets=3)(x, y), expected)
    # Many classes: the original's 9 targets, not torchattacks' n_classes - 1.
    assert AutoAttack(nn.Linear(64, 100), n_classes=100).n_targets == 9
    with pytest.raises(ValueError, match="outputs 4 classes"):
        AutoAttack(model, n_classes=10)(x[:5], y[:5])
    with pytest.raises(ValueError, match="at least 4 classes"):
        AutoAttack(model, n_classes=3)


# Resuming after a kill (advprune.attacks.state): the state is saved at every point the attack can continue from
# (every=0), a kill is simulated right after chosen saves (the file is complete then: save_torch is atomic), and
# the run continued from the file must end with an uninterrupted run's points.


class Killed(Exception):
    pass


class KillAfter(AttackState):
    """Saves at every point the attack can continue from; records where each save was made and stops the attack
    right after the saves numbered in `kills` (counted over every run on this file)."""

    def __init__(self, path, kills=(), saves=None):
        super().__init__(path, every=0)
        self.kills, self.saves = set(kills), [] if saves is None else saves

    def save(self, key, progress):
        super().save(key, progress)
        self.saves.append(_where(progress))
        if len(self.saves) in self.kills:
            raise Killed


def _where(progress) -> tuple:
    """Which part a save was made in, and where in it: between batches, or which loop inside a batch."""
    inner = progress["inner"]
    if progress["part"] == len(ORDER) - 1:
        return ("done",)
    if inner is None:
        return ORDER[1 + progress["part"]], "between batches"
    loops = "targets" if "target" in inner else "queries" if "query" in inner else "iterations" if inner["run"] is not None else "chunks"
    return ORDER[1 + progress["part"]], f"between {loops}"


def rehearsal(model, max_batch=100, seed=0):
    # small batches and chunks: several batches per part and several FAB-T chunks per batch
    return AutoAttack(model, eps=EPS, seed=seed, version="rehearsal", batch_size=64, max_batch=max_batch, log_progress=False)


def same_points(a, b) -> bool:
    return torch.equal(a.robust, b.robust) and torch.equal(a.x_adv, b.x_adv) and torch.equal(a.clean_correct, b.clean_correct) \
        and a.robust_after == b.robust_after


@pytest.fixture(scope="module")
def uninterrupted(setup, tmp_path_factory):
    """The rehearsal run on 200 points, once without a state and once saving at every point it can continue from."""
    model, x, y = setup
    plain = rehearsal(model)(x, y)
    state = KillAfter(tmp_path_factory.mktemp("state") / "aa.state.pt")
    assert same_points(rehearsal(model)(x, y, state), plain)  # saving changes nothing
    return plain, state.saves


def test_a_killed_autoattack_continues_to_the_points_of_an_uninterrupted_run(setup, uninterrupted, tmp_path, caplog):
    """Killed at the first save of every kind (between batches of each part, between APGD-T's targets, FAB-T's
    chunks and iterations, Square's queries, and once done), each time continued from the file."""
    model, x, y = setup
    plain, saves = uninterrupted
    first = {}
    for number, where in enumerate(saves, 1):
        first.setdefault(where, number)
    assert set(first) >= {("apgd-ce", "between batches"), ("apgd-t", "between targets"), ("fab-t", "between chunks"), ("fab-t", "between iterations"),
                          ("square", "between queries"), ("done",)}, first
    accs = list(plain.robust_after.values())
    assert accs[1] < accs[0] and accs[2] < accs[1] and accs[3] < accs[2], "points must break after the kills in APGD-CE, APGD-T and FAB-T"

    path, saves_so_far, result, runs = tmp_path / "aa.state.pt", [], None, 0
    caplog.set_level("INFO", "advprune.attacks.autoattack")
    while result is None:
        runs += 1
        try:
            result = rehearsal(model)(x, y, KillAfter(path, first.values(), saves_so_far))
        except Killed:
            assert path.exists()
    assert runs == len(first) + 1
    assert same_points(result, plain)
    assert saves_so_far == saves  # the continued runs saved at the same points as the uninterrupted one
    assert sum("AutoAttack: resumed from" in r.getMessage() for r in caplog.records) == len(first)


def _broken_so_far(name: str, inner: dict, x: torch.Tensor) -> int:
    """Points a part has broken by the time it saved `inner` (all of x correctly classified)."""
    if name == "apgd-t":
        return int((~inner["acc"]).sum())
    if name == "square":
        return int((inner["margin_min"] <= 0).sum())
    m = len(inner["found"]) // len(x)  # FAB-T: each (target, point) run's distance to the closest point found
    dist = (inner["x_found"] - x.repeat(m, 1, 1, 1)).flatten(1).abs().amax(1)
    dist[~inner["found"]] = float("inf")
    if inner["run"] is not None:
        dist[inner["chunk"] * 40: (inner["chunk"] + 1) * 40] = inner["run"]["res2"]
    return int((dist.view(m, -1) <= EPS).any(0).sum())


@pytest.mark.parametrize("name", ["apgd-t", "fab-t", "square"])
def test_each_part_continues_inside_a_batch_to_the_uninterrupted_points(setup, tmp_path, name):
    """Killed at its first save and again halfway, each time continued from the state written to a file, a part
    returns the points of the uninterrupted part; it continues (it makes only the remaining saves) and breaks
    points after the first kill, so a continuation that ignored the saved loop or its random state would show."""
    model, x, y = setup
    part = rehearsal(model, max_batch=40).attacks[name]  # 18 chunks of FAB-T's 9 x 80 (target, point) runs
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    x, y = x[correct][:80], y[correct][:80]
    model.requires_grad_(False)
    try:
        saves = []
        plain = part(x, y, Checkpoint(None, lambda make: saves.append(make())))
        kills, states, path = [1, len(saves) // 2], [], tmp_path / "part.state.pt"
        resumed, made = None, 0
        while True:
            def save(make):
                nonlocal made
                made += 1
                if made in kills:
                    save_torch(make(), path)
                    raise Killed
            try:
                got = part(x, y, Checkpoint(resumed, save))
                break
            except Killed:
                resumed = load_torch(path)
                states.append(load_torch(path))  # the continuation updates `resumed` in place
    finally:
        model.requires_grad_(True)
    assert made == len(saves) and len(states) == 2
    assert torch.equal(got, plain)
    with torch.no_grad():
        broken = int((model(got).argmax(1) != y).sum())
    assert _broken_so_far(name, states[0], x) < broken < len(y), "no point broken after the first kill: the comparison would be vacuous"


def _other(change, model, x, y):
    """The attack, points and labels of a run that differs from rehearsal(model)(x, y) in one thing."""
    if change == "seed":
        return rehearsal(model, seed=1), x, y
    if change == "points":
        x = x.clone()
        x[0, 0, 3, 3] = 1 - x[0, 0, 3, 3]
        return rehearsal(model), x, y
    other = copy.deepcopy(model)
    with torch.no_grad():
        other[-1].bias[0] += 1e-4
    return rehearsal(other), x, y


@pytest.mark.parametrize("change", ["seed", "points", "model"])
def test_a_state_written_for_other_settings_points_or_a_model_is_set_aside(setup, tmp_path, caplog, change):
    model, x, y = setup
    x, y, path = x[:32], y[:32], tmp_path / "aa.state.pt"
    with pytest.raises(Killed):
        rehearsal(model)(x, y, KillAfter(path, kills=[3]))
    written = path.read_bytes()
    attack, x, y = _other(change, model, x, y)
    result = attack(x, y, AttackState(path))
    assert same_points(result, attack(x, y))  # started afresh
    assert (tmp_path / "aa.state.pt.stale").read_bytes() == written  # set aside, not overwritten
    warning = next(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert f"written for another {'settings' if change == 'seed' else change}" in warning and "moved aside" in warning


@pytest.mark.parametrize("damage", ["truncated", "inconsistent"])
def test_an_unreadable_state_or_one_that_does_not_fit_the_points_is_set_aside(setup, tmp_path, caplog, damage):
    model, x, y = setup
    x, y, path = x[:32], y[:32], tmp_path / "aa.state.pt"
    with pytest.raises(Killed):
        rehearsal(model)(x, y, KillAfter(path, kills=[3]))
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    else:  # the same key, but a point misclassified on clean inputs marked robust: never half-used
        state = load_torch(path)
        state["robust"] = state["robust"] | ~state["clean_correct"]
        save_torch(state, path)
    damaged = path.read_bytes()
    assert same_points(rehearsal(model)(x, y, AttackState(path)), rehearsal(model)(x, y))
    assert (tmp_path / "aa.state.pt.unreadable").read_bytes() == damaged
    warning = next(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert {"truncated": "truncated or corrupt", "inconsistent": "does not fit these points"}[damage] in warning
