"""The findings table: each reproduced paper's headline claim, tested on this run's aggregated tables.

Every claim gets one row per (dataset, arch) (and per sparsity or objective pair where the claim is about
each), with the numbers used and a verdict:
- reproduced / not reproduced: the 95 % interval of the claim's statistic lies wholly on one side of its
  threshold;
- inconclusive: the interval contains the threshold (the difference is within the uncertainty);
- not tested by this config: the run lacks the methods, sparsities, studies or columns the claim needs.

Intervals come from `advprune.stats.bootstrap`: paired over the test points when the models' records carry
per-point results on the same points (the usual case: every model of a run is evaluated on the same points),
with the seeds resampled too when there are several; each pairwise comparison also gives the exact McNemar test
(pooled over seeds). Methods are found by implementation (`impl`), not by config key: where several keys share
one, the key named like the implementation wins, else the first alphabetically; the numbers name the key used.
Nothing here knows what the papers found beyond the claim itself: the verdicts are computed from the tables.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from advprune.stats import CONFIDENCE, Estimate, accuracy_interval, bootstrap, mcnemar_exact, t_interval

from .points import PointIndex
from .style import DENSE
from .tables import NOT_COMPUTED, interval_text, retained_estimate

# Thresholds, each stated in the table's `criterion` column.
RETAINED_MOST = 0.80  # "keeps most" of the dense model's accuracy: at least 80 % of it
NONUNIFORM_DENSITY_RATIO = 2.0  # per-layer rates are non-uniform when the densest layer keeps >= 2x the fraction of the sparsest
MODERATE_SPARSITY = (0.5, 0.9)  # PwoA's "moderate sparsity": the highest target sparsity in this range
TEN_X = 0.9  # Sehwag et al.: 10x compression is 90 % of the weights removed
SPARSITY_TOLERANCE = 0.02  # "equal sparsity" (MRPF vs uniform): measured sparsities within 2 points
ROBUST = "autoattack_acc"  # robust accuracy = standard AutoAttack
NATURAL = "natural"

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_TESTED = "reproduced", "not reproduced", "inconclusive", "not tested by this config"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_TESTED)
COLUMNS = ["paper", "claim", "dataset", "arch", "verdict", "numbers", "criterion", "statistic", "value", "lo", "hi", "paired",
           "mcnemar_p"]

HARP, BPC, MRPF, PWOA, SEHWAG = ("HARP (Zhao & Wressnegger 2023)", "Beyond Pruning Criteria", "MRPF (Bai et al. 2024)",
                                 "PwoA (Jian et al. 2022)", "Sehwag et al. 2019")


def at_least(est: Estimate | None, threshold: float) -> str:
    """Verdict on "statistic >= threshold" from its interval."""
    if est is None or math.isnan(est.value) or math.isnan(est.lo):
        return NOT_TESTED
    if est.lo >= threshold:
        return REPRODUCED
    return NOT_REPRODUCED if est.hi < threshold else INCONCLUSIVE


def greater(est: Estimate | None, threshold: float) -> str:
    """Verdict on "statistic > threshold": an interval touching the threshold is inconclusive."""
    verdict = at_least(est, threshold)
    return INCONCLUSIVE if verdict == REPRODUCED and est.lo == threshold else verdict


def below(est: Estimate | None, threshold: float) -> str:
    """Verdict on "statistic < threshold" from its interval."""
    verdict = at_least(est, threshold)
    return {REPRODUCED: NOT_REPRODUCED, NOT_REPRODUCED: REPRODUCED}.get(verdict, verdict)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _est_text(est: Estimate, signed: bool = False) -> str:
    """A difference (signed, in points) or a retained share (in %) with its interval and how it was found."""
    value = f"{100 * est.value:+.1f}" if signed else _pct(est.value)
    unit = " points" if signed else " %"
    return f"{value} [{_pct(est.lo)}, {_pct(est.hi)}]{unit} ({'paired' if est.paired else 'unpaired'} bootstrap)"


def _row(paper, claim, scope, verdict, numbers, criterion, statistic="", est: Estimate | None = None, p=math.nan) -> dict:
    dataset, arch = scope
    return {"paper": paper, "claim": claim, "dataset": dataset, "arch": arch, "verdict": verdict, "numbers": numbers,
            "criterion": criterion, "statistic": statistic, "value": est.value if est else math.nan, "lo": est.lo if est else math.nan,
            "hi": est.hi if est else math.nan, "paired": est.paired if est else math.nan, "mcnemar_p": p}


def pick(rows: pd.DataFrame, impl: str, structured: bool | None = None) -> str | None:
    """The method key that stands for `impl` (see the module docstring); `structured` False/True leaves out
    models known to be the other kind."""
    rows = rows[rows["impl"] == impl]
    if structured is not None and "structured" in rows:
        rows = rows[rows["structured"].map(lambda v: pd.isna(v) or bool(v) == structured).astype(bool)]
    names = sorted(set(rows["method"]))
    return impl if impl in names else (names[0] if names else None)


def _common_seeds(*frames: pd.DataFrame) -> list:
    seeds = set(frames[0]["seed"])
    for f in frames[1:]:
        seeds &= set(f["seed"])
    return sorted(seeds)


def compare(index: PointIndex, table: str, a: pd.DataFrame, b: pd.DataFrame, metric: str = ROBUST) -> tuple[Estimate, float, str]:
    """acc(a) - acc(b) (means over common seeds) with its bootstrap interval, the exact McNemar p pooled over
    seeds (NaN without per-point results) and a text with both."""
    seeds = _common_seeds(a, b)
    a, b = a[a["seed"].isin(seeds)].sort_values("seed"), b[b["seed"].isin(seeds)].sort_values("seed")
    models = index.models({"a": (table, a), "b": (table, b)}, metric)
    est = bootstrap(models, lambda acc: (acc["a"] - acc["b"]).mean(axis=1))
    p, text = math.nan, ""
    if est.paired:
        test = mcnemar_exact(np.concatenate(models["a"].bits), np.concatenate(models["b"].bits))
        p, text = test.p_value, f"; exact McNemar p = {test.p_value:.3g} ({test.only_a} vs {test.only_b} discordant points)"
    return est, p, text


def _acc_text(rows: pd.DataFrame, metric: str = ROBUST) -> str:
    ci = accuracy_interval(rows[metric], rows["n_examples"])
    return interval_text(100 * ci.mean, 100 * ci.lo, 100 * ci.hi)


def _scopes(*frames: pd.DataFrame) -> list[tuple[str, str]]:
    scopes = sorted({(d, a) for f in frames for d, a in zip(f["dataset"], f["arch"])})
    return scopes or [("–", "–")]


def _at(rows: pd.DataFrame, method: str, target: float) -> pd.DataFrame:
    return rows[(rows["method"] == method) & np.isclose(rows["sparsity_target"].astype(float), target)]


# --- HARP ---------------------------------------------------------------------------------------------------

def harp_claims(summary: pd.DataFrame, layers: pd.DataFrame, index: PointIndex) -> list[dict]:
    rows = []
    order = "at the highest sparsity all three share, robust (AutoAttack) accuracy"
    criterion = f"reproduced if the {CONFIDENCE:.0%} interval of the accuracy difference is >= 0, not reproduced if it is < 0"
    for scope in _scopes(summary):
        df = summary[(summary["dataset"] == scope[0]) & (summary["arch"] == scope[1])]
        keys = {impl: pick(df, impl, structured=False) for impl in ("harp", "hydra", "lwm")}
        missing = [impl for impl, key in keys.items() if key is None]
        targets = sorted(set.intersection(*[set(df.loc[df["method"] == k, "sparsity_target"]) for k in keys.values() if k])) if not missing else []
        for a, b in (("harp", "hydra"), ("hydra", "lwm")):
            claim = f"{a.upper()} >= {b.upper()} {order}"
            if missing or not targets:
                why = f"no unstructured {', '.join(missing)} model" if missing else "no sparsity shared by harp, hydra and lwm"
                rows.append(_row(HARP, claim, scope, NOT_TESTED, why, criterion))
                continue
            target = targets[-1]
            ra, rb = _at(df, keys[a], target), _at(df, keys[b], target)
            est, p, test = compare(index, "summary", ra, rb)
            numbers = (f"AA at {_pct(target)}% sparsity: {keys[a]} {_acc_text(ra)}, {keys[b]} {_acc_text(rb)}; "
                       f"difference {_est_text(est, signed=True)}{test}")
            rows.append(_row(HARP, claim, scope, at_least(est, 0.0), numbers, criterion, f"AA({keys[a]}) - AA({keys[b]})", est, p))

        claim = "HARP's learned per-layer rates are non-uniform"
        criterion_rates = (f"per seed, max / min per-layer density at HARP's highest sparsity >= {NONUNIFORM_DENSITY_RATIO:g}x: "
                           "reproduced if so for every seed, not reproduced if for none, else inconclusive")
        key = keys["harp"] or pick(df, "harp")
        harp = layers[(layers["dataset"] == scope[0]) & (layers["arch"] == scope[1]) & (layers["method"] == key)] if key else layers.iloc[:0]
        if harp.empty:
            rows.append(_row(HARP, claim, scope, NOT_TESTED, "no HARP model in layer_sparsity", criterion_rates))
            continue
        target = harp["sparsity_target"].max()
        ratios = []
        for _, seed_rows in harp[np.isclose(harp["sparsity_target"], target)].groupby("seed"):
            density = 1 - seed_rows["sparsity"].astype(float)
            ratios.append(math.inf if density.min() <= 0 else float(density.max() / density.min()))
        wide = [r >= NONUNIFORM_DENSITY_RATIO for r in ratios]
        verdict = REPRODUCED if all(wide) else NOT_REPRODUCED if not any(wide) else INCONCLUSIVE
        density = 1 - harp.loc[np.isclose(harp["sparsity_target"], target), "sparsity"].astype(float)
        numbers = (f"{key} at {_pct(target)}%: per-layer density {_pct(density.min())}-{_pct(density.max())}% "
                   f"(max/min {', '.join('inf' if math.isinf(r) else f'{r:.1f}x' for r in ratios)} per seed; uniform: 1x)")
        rows.append(_row(HARP, claim, scope, verdict, numbers, criterion_rates, "max/min layer density"))
    return rows


# --- Beyond Pruning Criteria ----------------------------------------------------------------------------------

def criteria_claims(study: pd.DataFrame, index: PointIndex) -> list[dict]:
    claim = "the choice of fine-tuning changes robust accuracy more than the choice of pruning criterion (random excluded)"
    criterion = (f"statistic: mean over criteria of the AA range across fine-tuning modes minus mean over modes of the AA range "
                 f"across criteria; reproduced if its {CONFIDENCE:.0%} interval is > 0, not reproduced if < 0")
    rows = []
    pruned = study[(study["method"] != DENSE) & (study["impl"] != "random")] if not study.empty else study
    for scope in _scopes(study):
        df = pruned[(pruned["dataset"] == scope[0]) & (pruned["arch"] == scope[1])]
        if df.empty:
            rows.append(_row(BPC, claim, scope, NOT_TESTED, "no fine-tuning study (study_finetune) with a real criterion", criterion))
            continue
        for target, at_target in df.groupby("sparsity_target"):
            criteria, modes = sorted(set(at_target["method"])), sorted(set(at_target["finetune_mode"].dropna()))
            cells = {(c, m): at_target[(at_target["method"] == c) & (at_target["finetune_mode"] == m)] for c in criteria for m in modes}
            seeds = _common_seeds(*cells.values()) if cells else []
            if len(criteria) < 2 or len(modes) < 2 or not seeds or any(cell.empty for cell in cells.values()):
                rows.append(_row(BPC, claim, scope, NOT_TESTED, f"needs >= 2 criteria x >= 2 fine-tuning modes, all run; "
                                 f"have criteria {criteria}, modes {modes}", criterion))
                continue
            models = index.models({f"{c}|{m}": ("study_finetune", cell[cell["seed"].isin(seeds)]) for (c, m), cell in cells.items()}, ROBUST)

            def statistic(acc, criteria=criteria, modes=modes):
                grid = np.stack([np.stack([acc[f"{c}|{m}"].mean(axis=1) for m in modes], axis=-1) for c in criteria], axis=-2)
                finetune_effect = (grid.max(axis=-1) - grid.min(axis=-1)).mean(axis=-1)  # per criterion, across modes
                criterion_effect = (grid.max(axis=-2) - grid.min(axis=-2)).mean(axis=-1)  # per mode, across criteria
                return finetune_effect - criterion_effect

            est = bootstrap(models, statistic)
            means = {k: float(np.mean(m.acc)) for k, m in models.items()}
            grid = np.array([[means[f"{c}|{m}"] for m in modes] for c in criteria])
            numbers = (f"at {_pct(target)}% sparsity, AA range across modes (mean over {', '.join(criteria)}) "
                       f"{_pct((grid.max(1) - grid.min(1)).mean())} points, across criteria (mean over {', '.join(modes)}) "
                       f"{_pct((grid.max(0) - grid.min(0)).mean())} points; difference {_est_text(est, signed=True)}")
            rows.append(_row(BPC, claim, scope, greater(est, 0.0), numbers, criterion,
                             "fine-tuning effect - criterion effect", est))
    return rows


# --- MRPF -----------------------------------------------------------------------------------------------------

def mrpf_claims(summary: pd.DataFrame, index: PointIndex) -> list[dict]:
    claim = "sensitivity-adaptive structured ratios (mrpf) are at least as robust (AA) as uniform ones (l1_filter) at equal sparsity"
    criterion = (f"measured sparsities within {_pct(SPARSITY_TOLERANCE)} points; reproduced if the {CONFIDENCE:.0%} interval of "
                 "AA(mrpf) - AA(l1_filter) is >= 0, not reproduced if < 0")
    rows = []
    for scope in _scopes(summary):
        df = summary[(summary["dataset"] == scope[0]) & (summary["arch"] == scope[1])]
        mrpf, uniform = pick(df, "mrpf"), pick(df, "l1_filter")
        targets = sorted(set(df.loc[df["method"] == mrpf, "sparsity_target"]) & set(df.loc[df["method"] == uniform, "sparsity_target"]))
        if not (mrpf and uniform and targets):
            rows.append(_row(MRPF, claim, scope, NOT_TESTED, "needs mrpf and l1_filter models at a common target sparsity", criterion))
            continue
        for target in targets:
            ra, rb = _at(df, mrpf, target), _at(df, uniform, target)
            sa, sb = ra["sparsity_measured"].mean(), rb["sparsity_measured"].mean()
            sparsities = f"measured sparsity {mrpf} {_pct(sa)}%, {uniform} {_pct(sb)}%"
            if abs(sa - sb) > SPARSITY_TOLERANCE:
                rows.append(_row(MRPF, claim, scope, NOT_TESTED, f"at {_pct(target)}% target: unequal sparsity ({sparsities})", criterion))
                continue
            est, p, test = compare(index, "summary", ra, rb)
            numbers = (f"at {_pct(target)}% target ({sparsities}): AA {mrpf} {_acc_text(ra)}, {uniform} {_acc_text(rb)}; "
                       f"difference {_est_text(est, signed=True)}{test}")
            rows.append(_row(MRPF, claim, scope, at_least(est, 0.0), numbers, criterion, f"AA({mrpf}) - AA({uniform})", est, p))
    return rows


# --- PwoA -----------------------------------------------------------------------------------------------------

def pwoa_claims(summary: pd.DataFrame, prune_curves: pd.DataFrame, curves: pd.DataFrame, index: PointIndex) -> list[dict]:
    rows = []
    lo_s, hi_s = MODERATE_SPARSITY
    claim = "pruning without adversarial examples keeps most of the dense model's robust (AA) accuracy at moderate sparsity"
    criterion = (f"at the highest target in [{_pct(lo_s)}, {_pct(hi_s)}]%: reproduced if the {CONFIDENCE:.0%} interval of "
                 f"AA(pwoa) / AA(dense) is >= {RETAINED_MOST:.0%}, not reproduced if < {RETAINED_MOST:.0%}")
    claim_time = "PwoA's pruning job spends less time per epoch than adversarial fine-tuning"
    criterion_time = (f"seconds per epoch (training curves; validation included in both): reproduced if the {CONFIDENCE:.0%} "
                      "t-interval of PwoA's mean lies below that of fine-tuning's, not reproduced if above")
    for scope in _scopes(summary):
        df = summary[(summary["dataset"] == scope[0]) & (summary["arch"] == scope[1])]
        key = pick(df, "pwoa")
        dense = df[df["method"] == DENSE]
        targets = sorted(t for t in df.loc[df["method"] == key, "sparsity_target"] if lo_s - 1e-9 <= t <= hi_s + 1e-9) if key else []
        if not key or dense.empty or not targets:
            why = "no pwoa model" if not key else "no dense model" if dense.empty else f"no pwoa target in [{_pct(lo_s)}, {_pct(hi_s)}]%"
            rows.append(_row(PWOA, claim, scope, NOT_TESTED, why, criterion))
        else:
            pruned = _at(df, key, targets[-1])
            est = retained_estimate(pruned, dense, ROBUST, index, table="summary")
            if est is None:
                rows.append(_row(PWOA, claim, scope, NOT_TESTED, "no common seed with a dense model of nonzero AA", criterion))
            else:
                numbers = (f"at {_pct(targets[-1])}%: AA {key} {_acc_text(pruned)}, dense {_acc_text(dense)}; "
                           f"retained {_est_text(est)}")
                rows.append(_row(PWOA, claim, scope, at_least(est, RETAINED_MOST), numbers, criterion, "AA(pwoa) / AA(dense)", est))

        mine = prune_curves[(prune_curves["dataset"] == scope[0]) & (prune_curves["arch"] == scope[1]) & (prune_curves["impl"] == "pwoa")]
        tuned = curves[(curves["dataset"] == scope[0]) & (curves["arch"] == scope[1]) & (curves["stage"] == "finetune")]
        if key:
            tuned = tuned[tuned["method"] != key]
        if mine.empty or tuned.empty or "seconds" not in mine or "seconds" not in tuned or mine["seconds"].isna().all():
            why = "no PwoA prune curves" if mine.empty or "seconds" not in mine else "no fine-tuning epochs"
            rows.append(_row(PWOA, claim_time, scope, NOT_TESTED, why, criterion_time))
            continue
        m = t_interval(mine["seconds"].dropna().astype(float))
        f = t_interval(tuned["seconds"].dropna().astype(float))
        if any(map(math.isnan, (*m, *f))):
            verdict = INCONCLUSIVE  # a single epoch on one side: no interval
        else:
            verdict = REPRODUCED if m[2] < f[1] else NOT_REPRODUCED if m[1] > f[2] else INCONCLUSIVE
        numbers = (f"s/epoch: pwoa {m[0]:.3g} [{m[1]:.3g}, {m[2]:.3g}] over {mine['seconds'].notna().sum()} epochs, fine-tuning "
                   f"{f[0]:.3g} [{f[1]:.3g}, {f[2]:.3g}] over {tuned['seconds'].notna().sum()} epochs (ratio {m[0] / f[0]:.2f})")
        rows.append(_row(PWOA, claim_time, scope, verdict, numbers, criterion_time, "s/epoch pwoa / fine-tuning",
                         Estimate(m[0] / f[0], math.nan, math.nan, False)))
    return rows


# --- Sehwag et al. 2019 ---------------------------------------------------------------------------------------

def sehwag_claims(study: pd.DataFrame, index: PointIndex) -> list[dict]:
    rows = []
    keep = (f"at {_pct(TEN_X)}% sparsity (10x): reproduced if the {CONFIDENCE:.0%} bootstrap intervals of the retained fractions "
            f"(pruned / dense of the same pretraining) are all >= {RETAINED_MOST:.0%}, not reproduced if any is < {RETAINED_MOST:.0%}")
    lose = (f"at {_pct(TEN_X)}% sparsity: reproduced if the {CONFIDENCE:.0%} interval of AA retained is < {RETAINED_MOST:.0%}, "
            f"not reproduced if >= {RETAINED_MOST:.0%}")
    claims = {"matched": "pretraining and fine-tuning with the same robust objective keep most of the dense model's benign and robust (AA) accuracy",
              "natural": "fine-tuning naturally after robust pretraining does not keep most of the robust (AA) accuracy",
              "verified": "the same robust objective keeps most of the dense model's verified accuracy"}
    for scope in _scopes(study):
        df = study[(study["dataset"] == scope[0]) & (study["arch"] == scope[1])]
        at10 = df[np.isclose(df["sparsity_target"].astype(float), TEN_X) & (df["method"] != DENSE)]
        dense = df[df["method"] == DENSE]
        pairs = sorted({(p, f) for p, f in zip(at10["pretrain_objective"], at10["finetune_objective"]) if isinstance(p, str) and isinstance(f, str)})
        matched = [(p, f) for p, f in pairs if p == f != NATURAL]
        natural = [(p, f) for p, f in pairs if p != NATURAL and f == NATURAL]

        def retained(p, f, metric):
            pruned = at10[(at10["pretrain_objective"] == p) & (at10["finetune_objective"] == f)]
            return pruned, retained_estimate(pruned, dense[dense["pretrain_objective"] == p], metric, index)

        if not matched:
            rows.append(_row(SEHWAG, claims["matched"], scope, NOT_TESTED,
                             "no robust pretraining -> same fine-tuning pair at 90% in study_objectives", keep))
        for p, f in matched:
            ests = {m: retained(p, f, m)[1] for m in ("clean_acc", ROBUST)}
            if any(e is None for e in ests.values()):
                rows.append(_row(SEHWAG, claims["matched"], scope, NOT_TESTED, f"{p} -> {f}: no dense {p} model with nonzero accuracy", keep))
                continue
            verdicts = [at_least(e, RETAINED_MOST) for e in ests.values()]
            verdict = NOT_REPRODUCED if NOT_REPRODUCED in verdicts else REPRODUCED if all(v == REPRODUCED for v in verdicts) else INCONCLUSIVE
            numbers = f"{p} -> {f}: clean retained {_est_text(ests['clean_acc'])}, AA retained {_est_text(ests[ROBUST])}"
            rows.append(_row(SEHWAG, claims["matched"], scope, verdict, numbers, keep, "AA retained", ests[ROBUST]))
        if not natural:
            rows.append(_row(SEHWAG, claims["natural"], scope, NOT_TESTED, "no robust pretraining -> natural fine-tuning pair at 90%", lose))
        for p, f in natural:
            est = retained(p, f, ROBUST)[1]
            if est is None:
                rows.append(_row(SEHWAG, claims["natural"], scope, NOT_TESTED, f"{p} -> {f}: no dense {p} model with nonzero AA", lose))
                continue
            rows.append(_row(SEHWAG, claims["natural"], scope, below(est, RETAINED_MOST), f"{p} -> {f}: AA retained {_est_text(est)}", lose,
                             "AA retained", est))
        # Verified accuracy (`verified_acc` in the records) arrives with verification; until then: not computed.
        verified = [(p, f) for p, f in matched if "verified_acc" in at10 and retained(p, f, "verified_acc")[0]["verified_acc"].notna().any()]
        if not verified:
            rows.append(_row(SEHWAG, claims["verified"], scope, NOT_TESTED, f"verified_acc {NOT_COMPUTED}", keep))
        for p, f in verified:
            est = retained(p, f, "verified_acc")[1]
            verdict = at_least(est, RETAINED_MOST) if est else NOT_TESTED
            numbers = f"{p} -> {f}: verified retained {_est_text(est)}" if est else f"{p} -> {f}: no dense {p} model with nonzero verified accuracy"
            rows.append(_row(SEHWAG, claims["verified"], scope, verdict, numbers, keep, "verified retained", est))
    return rows


def findings_table(summary: pd.DataFrame, layers: pd.DataFrame, study_finetune: pd.DataFrame, study_objectives: pd.DataFrame,
                   prune_curves: pd.DataFrame, training_curves: pd.DataFrame, per_point: pd.DataFrame) -> pd.DataFrame:
    """Every claim's rows, in the order of the papers above."""
    index = PointIndex(per_point)
    rows = [*harp_claims(summary, layers, index), *criteria_claims(study_finetune, index), *mrpf_claims(summary, index),
            *pwoa_claims(summary, prune_curves, training_curves, index), *sehwag_claims(study_objectives, index)]
    return pd.DataFrame(rows, columns=COLUMNS)


def findings_display(table: pd.DataFrame, pm: str, times: str):
    header = ["Paper", "Claim", "Dataset", "Arch", "Verdict", "Numbers (%; 95 % intervals)", "Decision rule"]
    rows = [[r.paper, r.claim, r.dataset, r.arch, r.verdict, r.numbers, r.criterion] for r in table.itertuples(index=False)]
    return header, rows, len(header)


findings_display.tex_columns = r"p{2.4cm}p{4.2cm}llp{1.8cm}p{6.5cm}p{5cm}"  # long text wraps in paragraph columns

BUILDERS: dict[str, tuple[Callable, Callable]] = {"findings": (findings_table, findings_display)}
