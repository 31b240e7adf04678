"""The findings table: each reproduced paper's headline claim, tested on this run's aggregated tables.

Every claim gets one row per (dataset, arch) (and per sparsity or objective pair where the claim is about
each), with the numbers used and a verdict:
- reproduced / not reproduced: the 95 % interval of the claim's statistic lies wholly on one side of its
  threshold;
- inconclusive: the interval contains the threshold (the difference is within the uncertainty);
- not tested by this config: the run lacks the methods, sparsities, studies or columns the claim needs;
- not tested: unequal <what>: the claim's arms differ in something besides the method (fine-tuning objective,
  epochs, steps, lr, schedule, ..., from the records' budgets; the pruning objective of two learned-score methods;
  the granularity or allocation of the criteria a criterion claim compares): the comparison is not controlled;
- one training run: the interval says reproduced or not, but it covers the test points of one seed only; a
  verdict needs at least two seeds (training runs), whose spread the bootstrap then resamples too.
A verdict built on a model whose method did not run its course (the record's convergence report) keeps its
verdict and says so in `caveat`.

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

MIN_SEEDS = 2  # training runs behind a verdict

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_TESTED = "reproduced", "not reproduced", "inconclusive", "not tested by this config"
ONE_RUN, UNEQUAL = "one training run", "not tested: unequal"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, ONE_RUN, NOT_TESTED)  # and UNEQUAL + " <what>"
COLUMNS = ["paper", "claim", "dataset", "arch", "verdict", "seeds", "caveat", "budget", "numbers", "criterion", "statistic", "value", "lo", "hi",
           "paired", "mcnemar_p"]
# Measured, not set: the arms of a comparison may differ in them.
UNCONTROLLED = ("ft_train_seconds",)

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


def _row(paper, claim, scope, verdict, numbers, criterion, statistic="", est: Estimate | None = None, p=math.nan, seeds: int = 0,
         arms: dict[str, pd.DataFrame] | None = None) -> dict:
    """One findings row; a reproduced / not reproduced verdict from fewer than MIN_SEEDS training runs becomes ONE_RUN.
    `arms` (name -> its rows): the models compared, whose budgets and convergence the row names."""
    dataset, arch = scope
    if verdict in (REPRODUCED, NOT_REPRODUCED) and seeds < MIN_SEEDS:
        numbers, verdict = f"{numbers}; {verdict} on the test points of {seeds} training run (needs {MIN_SEEDS})", ONE_RUN
    if est is not None and est.nonfinite:
        numbers += f"; {est.nonfinite} of {est.n_samples} bootstrap samples undefined (a ratio over 0), counted as beyond either end"
    arms = arms or {}
    return {"paper": paper, "claim": claim, "dataset": dataset, "arch": arch, "verdict": verdict, "seeds": seeds,
            "caveat": convergence_caveat(arms), "budget": budget_text(arms), "numbers": numbers, "criterion": criterion, "statistic": statistic, "value": est.value if est else math.nan,
            "lo": est.lo if est else math.nan, "hi": est.hi if est else math.nan, "paired": est.paired if est else math.nan, "mcnemar_p": p}


def _same(value):
    """A setting as compared across arms: numbers as floats (5 == 5.0), empty cells as None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def unequal(arms: dict[str, pd.DataFrame], columns=None) -> str | None:
    """None when every row of every arm agrees on each control column (the fine-tuning settings and spending
    `ft_*` of the records, or `columns`), else what differs: "fine-tuning epochs (hydra 5, harp 10)"."""
    frames = {name: rows for name, rows in arms.items() if not rows.empty}
    if columns is None:
        columns = _finetune_columns(frames)
    differences = []
    for column in columns:
        values = {name: sorted({_same(v) for v in rows[column]} if column in rows else {None}, key=str) for name, rows in frames.items()}
        if len({v for vs in values.values() for v in vs}) > 1:
            label = f"fine-tuning {column.removeprefix('ft_')}" if column.startswith("ft_") else column.replace("_", " ")
            shown = ", ".join(f"{name} {'/'.join('none' if v is None else f'{v:g}' if isinstance(v, float) else v for v in vs)}"
                              for name, vs in values.items())
            differences.append(f"{label} ({shown})")
    return "; ".join(differences) or None


def _finetune_columns(arms: dict[str, pd.DataFrame]) -> list[str]:
    """The fine-tuning settings and spending (`ft_*`) the arms' records carry, less what no config controls."""
    return sorted({c for rows in arms.values() for c in rows.columns if c.startswith("ft_") and c not in UNCONTROLLED})


def _fmt(value) -> str:
    value = _same(value)
    return "?" if value is None else f"{value:g}" if isinstance(value, float) else value


def _spent(r) -> str:
    """One model's budget as the records state it: its pruning phases (if it trains) and its fine-tuning."""
    out = []
    if _same(r.get("prune_steps")) is not None:
        out.append(f"pruning {_fmt(r.get('prune_objective'))} {_fmt(r.get('prune_epochs'))} epochs / {_fmt(r.get('prune_steps'))} steps / "
                   f"{_fmt(r.get('prune_attack_calls'))} attack steps")
    if _same(r.get("ft_epochs")) is not None:
        out.append(f"fine-tuning {_fmt(r.get('ft_objective'))} {_fmt(r.get('ft_epochs'))} epochs / {_fmt(r.get('ft_steps'))} steps / "
                   f"{_fmt(r.get('ft_attack_calls'))} attack steps, lr {_fmt(r.get('ft_lr'))} {_fmt(r.get('ft_schedule'))}, "
                   f"batch {_fmt(r.get('ft_batch_size'))}, wd {_fmt(r.get('ft_weight_decay'))}")
    return "; ".join(out) or "no training after pretraining"


def budget_text(arms: dict[str, pd.DataFrame]) -> str:
    """What each arm's model was trained with, from the records (one text where every arm's is the same)."""
    spent = {name: sorted({_spent(r) for r in rows.to_dict("records")}) for name, rows in arms.items() if name != DENSE and not rows.empty}
    if not spent:
        return ""
    texts = {" | ".join(v) for v in spent.values()}
    if len(texts) == 1 and len(spent) > 1:
        return f"every arm: {texts.pop()}"
    return "; ".join(f"{name}: {' | '.join(v)}" for name, v in spent.items())


def convergence_caveat(arms: dict[str, pd.DataFrame]) -> str:
    """Which arms' methods did not run their course (or did not say), from the records' convergence reports."""
    notes = []
    for name, rows in arms.items():
        if "converged" not in rows or name == DENSE:
            continue
        for _, r in rows.sort_values("seed").iterrows():
            if r["converged"] is False:
                notes.append(f"{name} (seed {int(r['seed'])}) did not converge: {r.get('convergence', '')}")
            elif not isinstance(r["converged"], bool):
                notes.append(f"{name} (seed {int(r['seed'])}): convergence not reported")
    return "; ".join(notes)


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


def controlled_verdict(verdict: str, arms: dict[str, pd.DataFrame]) -> str:
    """`verdict`, unless the arms differ in their fine-tuning, or, where every arm learned its masks with a
    training objective (HARP, HYDRA), in that objective: then "not tested: unequal <what>"."""
    columns = None
    if all("prune_objective" in rows and rows["prune_objective"].notna().all() for rows in arms.values()):
        columns = _finetune_columns(arms) + ["prune_objective"]
    differs = unequal(arms, columns)
    return f"{UNEQUAL} {differs}" if differs else verdict


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
            arms = {keys[a]: ra, keys[b]: rb}
            est, p, test = compare(index, "summary", ra, rb)
            numbers = (f"AA at {_pct(target)}% sparsity: {keys[a]} {_acc_text(ra)}, {keys[b]} {_acc_text(rb)}; "
                       f"difference {_est_text(est, signed=True)}{test}")
            rows.append(_row(HARP, claim, scope, controlled_verdict(at_least(est, 0.0), arms), numbers, criterion, f"AA({keys[a]}) - AA({keys[b]})",
                             est, p, seeds=len(_common_seeds(ra, rb)), arms=arms))

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
        harp_rows = _at(df, key, target)
        for _, seed_rows in harp[np.isclose(harp["sparsity_target"], target)].groupby("seed"):
            density = 1 - seed_rows["sparsity"].astype(float)
            ratios.append(math.inf if density.min() <= 0 else float(density.max() / density.min()))
        wide = [r >= NONUNIFORM_DENSITY_RATIO for r in ratios]
        verdict = REPRODUCED if all(wide) else NOT_REPRODUCED if not any(wide) else INCONCLUSIVE
        density = 1 - harp.loc[np.isclose(harp["sparsity_target"], target), "sparsity"].astype(float)
        numbers = (f"{key} at {_pct(target)}%: per-layer density {_pct(density.min())}-{_pct(density.max())}% "
                   f"(max/min {', '.join('inf' if math.isinf(r) else f'{r:.1f}x' for r in ratios)} per seed; uniform: 1x)")
        rows.append(_row(HARP, claim, scope, verdict, numbers, criterion_rates, "max/min layer density", seeds=len(ratios),
                         arms={key: harp_rows}))
    return rows


# --- Beyond Pruning Criteria ----------------------------------------------------------------------------------

def criteria_claims(study: pd.DataFrame, index: PointIndex) -> list[dict]:
    claim = "the choice of fine-tuning changes robust accuracy more than the choice of pruning criterion (random excluded)"
    criterion = (f"statistic: mean over criteria of the AA range across fine-tuning modes minus mean over modes of the AA range "
                 f"across criteria; reproduced if its {CONFIDENCE:.0%} interval is > 0, not reproduced if < 0")
    rows = []
    # random is no criterion: left out by its ranking (by implementation where records predate the taxonomy)
    is_random = study["ranking"].eq("random") | (study["ranking"].isna() & study["impl"].eq("random")) if "ranking" in study else study["impl"].eq("random")
    pruned = study[(study["method"] != DENSE) & ~is_random] if not study.empty else study
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
            # criteria compared at one granularity and one allocation, and, within a mode, with the same fine-tuning
            differs = unequal({c: at_target[at_target["method"] == c] for c in criteria}, [k for k in ("structure", "allocation", "locality") if k in at_target])
            differs = differs or next(filter(None, (unequal({c: cells[(c, m)] for c in criteria}) for m in modes)), None)
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
            rows.append(_row(BPC, claim, scope, f"{UNEQUAL} {differs}" if differs else greater(est, 0.0), numbers, criterion,
                             "fine-tuning effect - criterion effect", est, seeds=len(seeds),
                             arms={c: at_target[at_target["method"] == c] for c in criteria}))
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
            arms = {mrpf: ra, uniform: rb}
            est, p, test = compare(index, "summary", ra, rb)
            numbers = (f"at {_pct(target)}% target ({sparsities}): AA {mrpf} {_acc_text(ra)}, {uniform} {_acc_text(rb)}; "
                       f"difference {_est_text(est, signed=True)}{test}")
            # the allocation is the method; the ranking within layers must be the same
            differs = unequal(arms) or unequal(arms, [k for k in ("ranking", "structure") if k in df])
            rows.append(_row(MRPF, claim, scope, f"{UNEQUAL} {differs}" if differs else at_least(est, 0.0), numbers, criterion,
                             f"AA({mrpf}) - AA({uniform})", est, p, seeds=len(_common_seeds(ra, rb)), arms=arms))
    return rows


# --- PwoA -----------------------------------------------------------------------------------------------------

def pwoa_claims(summary: pd.DataFrame, prune_curves: pd.DataFrame, curves: pd.DataFrame, index: PointIndex) -> list[dict]:
    rows = []
    lo_s, hi_s = MODERATE_SPARSITY
    claim = "pruning without adversarial examples keeps most of the dense model's robust (AA) accuracy at moderate sparsity"
    criterion = (f"at the highest target in [{_pct(lo_s)}, {_pct(hi_s)}]%: reproduced if the {CONFIDENCE:.0%} interval of "
                 f"AA(pwoa) / AA(dense) is >= {RETAINED_MOST:.0%}, not reproduced if < {RETAINED_MOST:.0%}")
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
                rows.append(_row(PWOA, claim, scope, at_least(est, RETAINED_MOST), numbers, criterion, "AA(pwoa) / AA(dense)", est,
                                 seeds=len(_common_seeds(pruned, dense)), arms={key: pruned}))

        rows.append(pwoa_time_claim(scope, df, key, targets, prune_curves, curves))
    return rows


PWOA_TIME_CLAIM = "PwoA spends less training time per epoch than PGD-AT fine-tuning of the same unstructured model"
PWOA_TIME_RULE = (f"seconds of updates per epoch (validation excluded), PwoA's ADMM and retraining epochs against the PGD-AT fine-tuning epochs "
                  f"of the unstructured, non-PwoA models at PwoA's target sparsity, with as many optimizer steps per epoch: reproduced if the "
                  f"{CONFIDENCE:.0%} t-interval of PwoA's mean lies below that of fine-tuning's, not reproduced if above")


def _update_seconds(curves: pd.DataFrame) -> pd.Series:
    """Seconds of each epoch's updates; curves written before `train_seconds` existed include the validation."""
    seconds = curves["train_seconds"] if "train_seconds" in curves else pd.Series(math.nan, index=curves.index)
    return seconds.fillna(curves["seconds"]).dropna().astype(float) if "seconds" in curves else seconds.dropna().astype(float)


def pwoa_time_claim(scope, summary: pd.DataFrame, key: str | None, targets: list, prune_curves: pd.DataFrame, curves: pd.DataFrame) -> dict:
    """PwoA's time claim, measured as the paper states it: its epochs (no adversarial examples) against PGD-AT
    fine-tuning of the same kind of model (unstructured, same sparsity, same data and batch size)."""
    if not key or not targets:
        return _row(PWOA, PWOA_TIME_CLAIM, scope, NOT_TESTED, "no pwoa model at a moderate sparsity", PWOA_TIME_RULE)
    target = targets[-1]

    def at(frame):
        return frame[(frame["dataset"] == scope[0]) & (frame["arch"] == scope[1]) & np.isclose(frame["sparsity_target"].astype(float), target)]

    mine = at(prune_curves)
    mine = mine[mine["method"] == key]
    adversarial = at(summary)
    adversarial = adversarial[(adversarial.get("ft_objective") == "pgd_at") & (adversarial["impl"] != "pwoa")
                              & adversarial["structured"].map(lambda v: v is False)] if "ft_objective" in summary else adversarial.iloc[:0]
    tuned = at(curves[curves["stage"] == "finetune"]).merge(adversarial[["seed", "method"]], on=["seed", "method"])
    if mine.empty or tuned.empty:
        why = "no PwoA prune curves" if mine.empty else f"no PGD-AT fine-tuning of an unstructured model at {_pct(target)}%"
        return _row(PWOA, PWOA_TIME_CLAIM, scope, NOT_TESTED, why, PWOA_TIME_RULE)
    steps = {name: sorted(set(frame["steps"].dropna().astype(int))) if "steps" in frame else [] for name, frame in (("pwoa", mine), ("fine-tuning", tuned))}
    if steps["pwoa"] != steps["fine-tuning"]:
        return _row(PWOA, PWOA_TIME_CLAIM, scope, f"{UNEQUAL} optimizer steps per epoch (pwoa {steps['pwoa']}, fine-tuning {steps['fine-tuning']})",
                    "", PWOA_TIME_RULE)
    m, f = t_interval(_update_seconds(mine)), t_interval(_update_seconds(tuned))
    if any(map(math.isnan, (*m, *f))):
        verdict = INCONCLUSIVE  # a single epoch on one side: no interval
    else:
        verdict = REPRODUCED if m[2] < f[1] else NOT_REPRODUCED if m[1] > f[2] else INCONCLUSIVE
    numbers = (f"at {_pct(target)}%: s/epoch {key} {m[0]:.3g} [{m[1]:.3g}, {m[2]:.3g}] over {len(mine)} epochs, PGD-AT fine-tuning of "
               f"{', '.join(sorted(set(tuned['method'])))} {f[0]:.3g} [{f[1]:.3g}, {f[2]:.3g}] over {len(tuned)} epochs (ratio {m[0] / f[0]:.2f})")
    models = at(summary)
    arms = {name: models[models["method"] == name] for name in (key, *sorted(set(tuned["method"])))}
    return _row(PWOA, PWOA_TIME_CLAIM, scope, verdict, numbers, PWOA_TIME_RULE, "s/epoch pwoa / PGD-AT fine-tuning",
                Estimate(m[0] / f[0], math.nan, math.nan, False), seeds=len(_common_seeds(mine, tuned)), arms=arms)


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

        def runs(p, f):
            """Training runs behind a pair's retained fractions, and its convergence caveat."""
            pruned = at10[(at10["pretrain_objective"] == p) & (at10["finetune_objective"] == f)]
            return {"seeds": len(_common_seeds(pruned, dense[dense["pretrain_objective"] == p])), "arms": {f"{p} -> {f}": pruned}}

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
            rows.append(_row(SEHWAG, claims["matched"], scope, verdict, numbers, keep, "AA retained", ests[ROBUST], **runs(p, f)))
        if not natural:
            rows.append(_row(SEHWAG, claims["natural"], scope, NOT_TESTED, "no robust pretraining -> natural fine-tuning pair at 90%", lose))
        for p, f in natural:
            est = retained(p, f, ROBUST)[1]
            if est is None:
                rows.append(_row(SEHWAG, claims["natural"], scope, NOT_TESTED, f"{p} -> {f}: no dense {p} model with nonzero AA", lose))
                continue
            rows.append(_row(SEHWAG, claims["natural"], scope, below(est, RETAINED_MOST), f"{p} -> {f}: AA retained {_est_text(est)}", lose,
                             "AA retained", est, **runs(p, f)))
        # Verified accuracy (`verified_acc` in the records) arrives with verification; until then: not computed.
        verified = [(p, f) for p, f in matched if "verified_acc" in at10 and retained(p, f, "verified_acc")[0]["verified_acc"].notna().any()]
        if not verified:
            rows.append(_row(SEHWAG, claims["verified"], scope, NOT_TESTED, f"verified_acc {NOT_COMPUTED}", keep))
        for p, f in verified:
            est = retained(p, f, "verified_acc")[1]
            verdict = at_least(est, RETAINED_MOST) if est else NOT_TESTED
            numbers = f"{p} -> {f}: verified retained {_est_text(est)}" if est else f"{p} -> {f}: no dense {p} model with nonzero verified accuracy"
            rows.append(_row(SEHWAG, claims["verified"], scope, verdict, numbers, keep, "verified retained", est, **runs(p, f)))
    return rows


def findings_table(summary: pd.DataFrame, layers: pd.DataFrame, study_finetune: pd.DataFrame, study_objectives: pd.DataFrame,
                   prune_curves: pd.DataFrame, training_curves: pd.DataFrame, per_point: pd.DataFrame) -> pd.DataFrame:
    """Every claim's rows, in the order of the papers above."""
    index = PointIndex(per_point)
    rows = [*harp_claims(summary, layers, index), *criteria_claims(study_finetune, index), *mrpf_claims(summary, index),
            *pwoa_claims(summary, prune_curves, training_curves, index), *sehwag_claims(study_objectives, index)]
    return pd.DataFrame(rows, columns=COLUMNS)


def findings_display(table: pd.DataFrame, pm: str, times: str):
    header = ["Paper", "Claim", "Dataset", "Arch", "Verdict", "Seeds", "Numbers (%; 95 % intervals)", "Budget (from the records)", "Decision rule"]
    def text(v):  # an empty CSV cell reads back as NaN
        return v if isinstance(v, str) else ""

    rows = [[r.paper, r.claim, r.dataset, r.arch, r.verdict + (f" ({r.caveat})" if text(r.caveat) else ""), str(r.seeds), r.numbers, text(r.budget),
             r.criterion] for r in table.itertuples(index=False)]
    return header, rows, len(header)


findings_display.tex_columns = r"p{2.4cm}p{4.2cm}llp{2.2cm}lp{6cm}p{4cm}p{4.5cm}"  # long text wraps in paragraph columns

BUILDERS: dict[str, tuple[Callable, Callable]] = {"findings": (findings_table, findings_display)}
