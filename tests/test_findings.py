"""The findings' verdict logic on constructed tables: every verdict reachable for every claim.

Models are built from per-point results over N shared test points: `k` points right, starting at `shift`
(cyclically), so nested models (same shift, fewer points) differ in one direction only, and equally accurate
models with different shifts differ both ways by the same amount. Every model is added for two seeds (training
runs) with the same results, the least a verdict needs, unless a test says otherwise; every model is fine-tuned
the same way (FINETUNE) unless a test changes that.
"""

from __future__ import annotations

import pandas as pd
import pytest

from advprune.report import findings
from advprune.report.findings import INCONCLUSIVE, NOT_REPRODUCED, NOT_TESTED, ONE_RUN, REPRODUCED, UNEQUAL, findings_table
from advprune.report.tables import INPUT_COLUMNS, read_table

N = 400
SCOPE = dict(dataset="digits", arch="small_cnn")
SEEDS = (0, 1)
FINETUNE = dict(ft_objective="pgd_at", ft_epochs=5, ft_lr=0.01, ft_schedule="cosine", ft_steps=50)


def _bits(k: int, shift: int = 0) -> str:
    return "".join("1" if (i - shift) % N < k else "0" for i in range(N))


class Run:
    """Aggregated tables under construction: `add` one evaluated model (into summary or a study table)."""

    def __init__(self):
        self.rows = {"summary": [], "study_finetune": [], "study_objectives": []}
        self.points, self.layers, self.prune_curves, self.curves = [], [], [], []

    def add(self, method, sparsity, aa, clean=None, impl=None, seeds=SEEDS, shift=0, table="summary", structured=False,
            measured=None, verified=None, model=None, **labels):
        """`model`: record columns of what made it (taxonomy, convergence, budget: FINETUNE by default)."""
        clean = N if clean is None else clean
        for seed in seeds:
            row = dict(**SCOPE, seed=seed, method=method, impl=impl or method, sparsity_target=sparsity,
                       sparsity_measured=sparsity if measured is None else measured, params_total=1000, params_nonzero=100,
                       flops_dense=1000, flops_effective=100, structured=structured, clean_acc=clean / N, pgd_acc=aa / N,
                       autoattack_acc=aa / N, n_examples=N, norm="Linf", eps=0.1, points_sha256="p", **labels)
            row |= ({} if method == "dense" else {"converged": True, **FINETUNE}) | (model or {})
            if verified is not None:
                row["verified_acc"] = verified / N
            self.rows[table].append(row)
            results = {"clean": _bits(clean, shift), "pgd": _bits(aa, shift), "autoattack": _bits(aa, shift)}
            if verified is not None:
                results["verified"] = _bits(verified, shift)
            for metric, bits in results.items():
                self.points.append({"table": table, **{k: row[k] for k in ("dataset", "arch", "seed", "method", "impl", "sparsity_target")},
                                    **labels, "points_sha256": "p", "metric": metric, "correct": bits})
        return self

    def layer_rates(self, method, sparsity, per_layer, seed=0):
        for i, s in enumerate(per_layer):
            self.layers.append(dict(**SCOPE, seed=seed, method=method, impl="harp", sparsity_target=sparsity, layer=f"l{i}",
                                    layer_index=i, n_params=100, sparsity=s))
        return self

    def seconds(self, pwoa, finetune, steps=(10, 10)):
        """Per-epoch update seconds of PwoA's job and of the lwm model's fine-tuning (add that model too), at 50 %."""
        for seed in SEEDS:
            self.prune_curves += [dict(**SCOPE, seed=seed, method="pwoa", impl="pwoa", sparsity_target=0.5, phase="admm", epoch=i + 1,
                                       seconds=s + 0.5, train_seconds=s, steps=steps[0]) for i, s in enumerate(pwoa)]
            self.curves += [dict(**SCOPE, seed=seed, stage="finetune", method="lwm", sparsity_target=0.5, epoch=i + 1, lr=0.1, train_loss=1,
                                 train_acc=0.5, val_clean_acc=0.5, val_robust_acc=0.3, seconds=s + 0.5, train_seconds=s, steps=steps[1])
                            for i, s in enumerate(finetune)]
        return self

    def findings(self, tmp_path) -> pd.DataFrame:
        frames = {**self.rows, "per_point": self.points, "layer_sparsity": self.layers, "prune_curves": self.prune_curves,
                  "training_curves": self.curves}
        for name, rows in frames.items():
            pd.DataFrame(rows, columns=None if rows else INPUT_COLUMNS[name]).to_csv(tmp_path / f"{name}.csv", index=False)
        t = {name: read_table(str(tmp_path), name) for name in frames}
        return findings_table(t["summary"], t["layer_sparsity"], t["study_finetune"], t["study_objectives"], t["prune_curves"],
                              t["training_curves"], t["per_point"])


def _verdicts(table: pd.DataFrame, paper: str, claim_part: str) -> list[str]:
    rows = table[(table["paper"] == paper) & table["claim"].str.contains(claim_part, regex=False)]
    assert len(rows), (paper, claim_part)
    return rows["verdict"].tolist()


def _harp_order(harp, hydra, lwm=100, harp_shift=0):
    run = Run()
    # At 50 % the order is reversed: only the highest sparsity counts.
    run.add("harp", 0.5, 50).add("hydra", 0.5, 350).add("lwm", 0.5, 300)
    run.add("harp", 0.99, harp, shift=harp_shift).add("hydra", 0.99, hydra).add("lwm", 0.99, lwm)
    # A structured HARP key: not what the claim compares, and far worse.
    run.add("harp_channel", 0.99, 0, impl="harp", structured=True)
    return run


@pytest.mark.parametrize("run,expected", [
    (_harp_order(300, 250), [REPRODUCED, REPRODUCED]),
    (_harp_order(200, 300), [NOT_REPRODUCED, REPRODUCED]),
    (_harp_order(250, 250, harp_shift=15), [INCONCLUSIVE, REPRODUCED]),
    (Run().add("harp", 0.99, 300).add("lwm", 0.99, 100), [NOT_TESTED, NOT_TESTED]),
])
def test_harp_ordering(tmp_path, run, expected):
    table = findings_table_of(run, tmp_path)
    assert _verdicts(table, findings.HARP, ">=") == expected
    first = table[table["claim"].str.startswith("HARP >= HYDRA")].iloc[0]
    if first["verdict"] != NOT_TESTED:
        assert "99.0% sparsity" in first["numbers"] and "harp_channel" not in first["numbers"]
        # Same points: the comparison is paired, with McNemar's test.
        assert bool(first["paired"]) and 0 <= first["mcnemar_p"] <= 1 and "McNemar" in first["numbers"]


def findings_table_of(run: Run, tmp_path) -> pd.DataFrame:
    return run.findings(tmp_path)


@pytest.mark.parametrize("rates,expected", [
    ({0: [0.9, 0.99, 0.995], 1: [0.9, 0.99, 0.995]}, REPRODUCED),  # densities 10 %, 1 %, 0.5 %
    ({0: [0.9, 0.99, 0.995]}, ONE_RUN),
    ({0: [0.99, 0.99, 0.99], 1: [0.99, 0.99, 0.99]}, NOT_REPRODUCED),
    ({0: [0.9, 0.99, 0.99], 1: [0.99, 0.99, 0.985]}, INCONCLUSIVE),  # seed 1: 1.5 % vs 1 %, under 2x
    ({}, NOT_TESTED),
])
def test_harp_layer_rates(tmp_path, rates, expected):
    run = Run().add("harp", 0.99, 200, seeds=sorted(rates) or SEEDS)
    for seed, per_layer in rates.items():
        run.layer_rates("harp", 0.99, per_layer, seed=seed)
        run.layer_rates("harp", 0.5, [0.5, 0.5, 0.5], seed=seed)  # uniform at 50 %: only the highest sparsity counts
    assert _verdicts(run.findings(tmp_path), findings.HARP, "non-uniform") == [expected]


def _criteria(grid: dict[tuple[str, str], tuple[int, int]]) -> Run:
    run = Run()
    for (criterion, mode), (aa, shift) in grid.items():
        run.add(criterion, 0.9, aa, shift=shift, table="study_finetune", impl=criterion, finetune_mode=mode)
    return run


RANDOM_FAR_OFF = {("random", "none"): (0, 0), ("random", "adversarial"): (0, 0)}  # would swamp the criterion effect


@pytest.mark.parametrize("grid,expected", [
    ({("lwm", "none"): (50, 0), ("lwm", "adversarial"): (300, 0), ("l1_filter", "none"): (40, 0),
      ("l1_filter", "adversarial"): (290, 0), **RANDOM_FAR_OFF}, REPRODUCED),
    ({("lwm", "none"): (300, 0), ("lwm", "adversarial"): (310, 0), ("l1_filter", "none"): (50, 0),
      ("l1_filter", "adversarial"): (60, 0)}, NOT_REPRODUCED),
    ({("lwm", "none"): (200, 0), ("lwm", "adversarial"): (200, 20), ("l1_filter", "none"): (200, 10),
      ("l1_filter", "adversarial"): (200, 30)}, INCONCLUSIVE),
    ({("lwm", "none"): (50, 0), ("lwm", "adversarial"): (300, 0), **RANDOM_FAR_OFF}, NOT_TESTED),  # one real criterion
])
def test_finetuning_matters_more_than_the_criterion(tmp_path, grid, expected):
    table = _criteria(grid).findings(tmp_path)
    assert _verdicts(table, findings.BPC, "fine-tuning") == [expected]
    if expected == REPRODUCED:
        assert "random" not in table[table["paper"] == findings.BPC]["numbers"].iloc[0]


@pytest.mark.parametrize("mrpf,l1,measured,expected", [
    (300, 200, 0.9, REPRODUCED),
    (200, 300, 0.9, NOT_REPRODUCED),
    ((250, 20), 250, 0.9, INCONCLUSIVE),
    (300, 200, 0.8, NOT_TESTED),  # sparsities not equal
])
def test_mrpf_at_least_as_robust_as_uniform(tmp_path, mrpf, l1, measured, expected):
    aa, shift = mrpf if isinstance(mrpf, tuple) else (mrpf, 0)
    run = Run().add("mrpf", 0.9, aa, shift=shift, structured=True, measured=measured).add("l1_filter", 0.9, l1, structured=True)
    assert _verdicts(run.findings(tmp_path), findings.MRPF, "mrpf") == [expected]


@pytest.mark.parametrize("pwoa,sparsity,expected", [
    (290, 0.9, REPRODUCED),  # 97 % of the dense model's 300
    (100, 0.9, NOT_REPRODUCED),
    (240, 0.9, INCONCLUSIVE),  # exactly 80 %
    (290, 0.99, NOT_TESTED),  # no moderate sparsity
])
def test_pwoa_keeps_most_robustness(tmp_path, pwoa, sparsity, expected):
    run = Run().add("dense", 0.0, 300, impl="dense").add("pwoa", 0.5, 300).add("pwoa", sparsity, pwoa)
    if sparsity == 0.99:
        run.rows["summary"] = [r for r in run.rows["summary"] if not (r["method"] == "pwoa" and r["sparsity_target"] == 0.5)]
    table = run.findings(tmp_path)
    assert _verdicts(table, findings.PWOA, "keeps most") == [expected]
    if expected != NOT_TESTED:
        # the highest moderate target: 90 %, not 50 %
        assert "at 90.0%" in table[table["claim"].str.contains("keeps most")]["numbers"].iloc[0]


@pytest.mark.parametrize("pwoa,finetune,expected", [
    ([1.0, 1.1, 0.9], [3.0, 3.1, 2.9], REPRODUCED),
    ([3.0, 3.1, 2.9], [1.0, 1.1, 0.9], NOT_REPRODUCED),
    ([1.0, 2.0, 3.0], [1.5, 2.0, 2.5], INCONCLUSIVE),
    (None, [1.0, 1.1], NOT_TESTED),
])
def test_pwoa_spends_less_time_than_adversarial_finetuning(tmp_path, pwoa, finetune, expected):
    run = Run().add("pwoa", 0.5, 200).add("lwm", 0.5, 200)
    if pwoa is None:
        run.curves = Run().seconds([], finetune).curves
    else:
        run.seconds(pwoa, finetune)
    assert _verdicts(run.findings(tmp_path), findings.PWOA, "time") == [expected]


@pytest.mark.parametrize("change,expected", [
    ({}, REPRODUCED),
    ({"lwm": dict(ft_objective="trades")}, NOT_TESTED),  # no PGD-AT fine-tuning to compare with
    ({"lwm": dict(structured=True)}, NOT_TESTED),  # not the same kind of model
    ({"steps": (10, 20)}, f"{UNEQUAL} optimizer steps per epoch (pwoa [10], fine-tuning [20])"),
])
def test_pwoa_time_is_measured_against_pgd_at_finetuning_of_an_unstructured_model(tmp_path, change, expected):
    lwm = change.get("lwm", {})
    run = Run().add("pwoa", 0.5, 200).add("lwm", 0.5, 200, structured=lwm.get("structured", False), model={k: v for k, v in lwm.items() if k != "structured"})
    run.seconds([1.0, 1.1, 0.9], [3.0, 3.1, 2.9], steps=change.get("steps", (10, 10)))
    table = run.findings(tmp_path)
    assert _verdicts(table, findings.PWOA, "time") == [expected]
    if expected == REPRODUCED:  # the row names what each arm spent, like every compared row
        budget = table[(table["paper"] == findings.PWOA) & table["claim"].str.contains("time")].iloc[0]["budget"]
        assert budget.startswith("every arm: fine-tuning pgd_at 5 epochs"), budget  # the test's two records spent the same


def _objectives(matched_aa: int, natural_aa: int | None, verified: int | None = None) -> Run:
    run = Run()
    run.add("dense", 0.0, 200, clean=360, impl="dense", table="study_objectives", pretrain_objective="pgd_at",
            verified=None if verified is None else 100)
    run.add("lwm", 0.9, matched_aa, clean=350, table="study_objectives", pretrain_objective="pgd_at", finetune_objective="pgd_at",
            verified=verified)
    if natural_aa is not None:
        run.add("lwm", 0.9, natural_aa, clean=355, table="study_objectives", pretrain_objective="pgd_at", finetune_objective="natural")
    return run


@pytest.mark.parametrize("matched,natural,expected", [
    (190, 20, (REPRODUCED, REPRODUCED)),  # 95 % kept vs 10 %
    (50, 195, (NOT_REPRODUCED, NOT_REPRODUCED)),
    (160, 160, (INCONCLUSIVE, INCONCLUSIVE)),  # exactly 80 %
    (190, None, (REPRODUCED, NOT_TESTED)),
])
def test_sehwag_objectives(tmp_path, matched, natural, expected):
    table = _objectives(matched, natural).findings(tmp_path)
    assert _verdicts(table, findings.SEHWAG, "same robust objective keep most") == [expected[0]]
    assert _verdicts(table, findings.SEHWAG, "naturally") == [expected[1]]
    # Not computed yet: verified accuracy is not tested (never read as 0).
    verified = table[table["claim"].str.contains("verified")].iloc[0]
    assert verified["verdict"] == NOT_TESTED and "not computed" in verified["numbers"]


@pytest.mark.parametrize("verified,expected", [(95, REPRODUCED), (20, NOT_REPRODUCED), (80, INCONCLUSIVE)])
def test_sehwag_verified_slot_is_used_once_records_have_it(tmp_path, verified, expected):
    table = _objectives(190, 20, verified=verified).findings(tmp_path)
    assert _verdicts(table, findings.SEHWAG, "verified") == [expected]


def test_a_run_with_nothing_tests_nothing(tmp_path):
    table = Run().findings(tmp_path)
    assert set(table["verdict"]) == {NOT_TESTED}
    assert set(table["paper"]) == {findings.HARP, findings.BPC, findings.MRPF, findings.PWOA, findings.SEHWAG}


def test_findings_are_written_in_every_format(tmp_path):
    from advprune.report.findings import findings_display
    from advprune.report.tables import to_latex, to_markdown, write_table

    table = _harp_order(300, 250).findings(tmp_path)
    written = write_table(table, str(tmp_path / "out/findings"), findings_display)
    csv = pd.read_csv(written[0])
    assert list(csv.columns) == findings.COLUMNS and len(csv) == len(table)
    md, tex = to_markdown(table, findings_display), to_latex(table, findings_display)
    assert "| HARP (Zhao & Wressnegger 2023) | HARP >= HYDRA" in md and "| reproduced |" in md
    assert tex.startswith(r"\begin{tabular}{p{2.4cm}") and r"Zhao \& Wressnegger" in tex and "99.0\\% sparsity" in tex


def test_models_on_different_points_are_not_paired(tmp_path):
    run = _harp_order(300, 250)
    for row in run.points:
        if row["method"] == "hydra":
            row["points_sha256"] = "other"  # e.g. another split or n_examples
    first = run.findings(tmp_path).iloc[0]
    assert not bool(first["paired"]) and pd.isna(first["mcnemar_p"]) and "unpaired bootstrap" in first["numbers"]


# --- controls: equal budgets, training runs, convergence -------------------------------------------------------

def test_arms_fine_tuned_differently_are_not_compared(tmp_path):
    run = Run().add("harp", 0.99, 300, model=dict(ft_objective="trades")).add("hydra", 0.99, 250).add("lwm", 0.99, 100)
    table = run.findings(tmp_path)
    assert _verdicts(table, findings.HARP, ">=") == [f"{UNEQUAL} fine-tuning objective (harp trades, hydra pgd_at)", REPRODUCED]  # hydra vs lwm: equal
    # each row names its arms' budgets from the records
    assert table["budget"].iloc[0].startswith("harp: fine-tuning trades 5 epochs / 50 steps") and "hydra: fine-tuning pgd_at" in table["budget"].iloc[0]
    assert table["budget"].iloc[1].startswith("every arm: fine-tuning pgd_at 5 epochs / 50 steps / ? attack steps, lr 0.01 cosine")


def test_learned_masks_need_the_same_pruning_objective(tmp_path):
    run = Run().add("harp", 0.99, 300, model=dict(prune_objective="pgd_at")).add("hydra", 0.99, 250, model=dict(prune_objective="trades"))
    run.add("lwm", 0.99, 100)  # one-shot: no pruning objective, so none is compared with hydra's
    assert _verdicts(run.findings(tmp_path), findings.HARP, ">=") == [f"{UNEQUAL} prune objective (harp pgd_at, hydra trades)", REPRODUCED]


def test_one_training_run_gives_no_verdict(tmp_path):
    run = Run().add("harp", 0.99, 300, seeds=(0,)).add("hydra", 0.99, 250, seeds=(0,)).add("lwm", 0.99, 100, seeds=(0,))
    table = run.findings(tmp_path)
    rows = table[table["claim"].str.contains(">=")]
    assert rows["verdict"].tolist() == [ONE_RUN, ONE_RUN] and rows["seeds"].tolist() == [1, 1]
    assert "reproduced on the test points of 1 training run" in rows["numbers"].iloc[0]
    # an interval that decides nothing stays inconclusive
    assert _verdicts(_harp_order(250, 250, harp_shift=15).findings(tmp_path), findings.HARP, "HARP >=") == [INCONCLUSIVE]


def test_a_method_that_did_not_run_its_course_is_named(tmp_path):
    run = Run().add("harp", 0.99, 300, model=dict(converged=False, convergence="budget not reached (density 1.52 % vs 1 %)"))
    run.add("hydra", 0.99, 250, model=dict(converged=None)).add("lwm", 0.99, 100)
    row = run.findings(tmp_path).iloc[0]
    assert row["verdict"] == REPRODUCED
    assert "harp (seed 0) did not converge: budget not reached (density 1.52 % vs 1 %)" in row["caveat"]
    assert "hydra (seed 1): convergence not reported" in row["caveat"]


def test_criteria_are_compared_at_one_granularity_and_allocation(tmp_path):
    run = Run()
    for criterion, structure, ranking in (("lwm", "US", "weight_l1"), ("l1_filter", "S", "weight_l1"), ("random_filter", "S", "random")):
        for mode, aa in (("none", 50), ("adversarial", 300)):
            run.add(criterion, 0.9, aa, table="study_finetune", finetune_mode=mode, model=dict(structure=structure, allocation="uniform", ranking=ranking))
    table = run.findings(tmp_path)
    assert _verdicts(table, findings.BPC, "fine-tuning") == [f"{UNEQUAL} structure (l1_filter S, lwm US)"]
    assert "random_filter" not in table[table["paper"] == findings.BPC]["numbers"].iloc[0]  # random by its ranking, whatever its key


def test_undefined_bootstrap_samples_are_counted_not_dropped():
    from advprune.stats import Model, bootstrap, from_bits

    # a dense accuracy of 1 point in 40: many resamples have none, and pruned / dense is then undefined or infinite
    models = {"pruned": Model([1 / 40], [40], [from_bits("1" + "0" * 39)]), "dense": Model([1 / 40], [40], [from_bits("0" * 39 + "1")])}
    est = bootstrap(models, lambda acc: (acc["pruned"] / acc["dense"]).mean(axis=1))
    assert est.nonfinite > 0.3 * est.n_samples
    # 0 / 0 in ~13 % of the resamples, x / 0 in ~24 %: both ends at infinity, so no threshold is decided
    assert est.lo == -float("inf") and est.hi == float("inf")
    assert findings.at_least(est, 0.8) == INCONCLUSIVE
