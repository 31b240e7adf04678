"""Read the aggregated tables and write the report's own tables as CSV, GitHub Markdown and LaTeX.

Report tables (each built from one aggregated table by the function of the same name + "_table"):
- robustness: accuracy, measured sparsity, nonzero parameters and FLOPs reduction per method and sparsity;
- finetune_study: accuracy per pruning criterion x fine-tuning mode ("Beyond Pruning Criteria");
- objective_study: accuracy kept after 10x compression per pretraining -> fine-tuning objective pair, relative to
  the dense model of the same pretraining objective (Sehwag et al. 2019);
- latency: size, FLOPs and CPU latency of the structured (physically smaller) models against the dense model.
- findings: each reproduced paper's headline claim with the numbers that test it and a verdict (`findings.py`).
Accuracies are in %: the mean over seeds with its 95 % interval, Student-t over the seeds when there are several,
else the Wilson interval over the test points ("71.3 [66.4, 75.8]" in Markdown and LaTeX; `_lo`, `_hi` columns
and the sample std `_std` in CSV). An accuracy a record does not have (verification or HO-FMN not run) reads
"not computed".
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable

import pandas as pd

from advprune.stats import accuracy_interval, bootstrap

from .points import PointIndex
from .style import DENSE, sort_methods

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = [
    "dataset", "arch", "seed", "method", "sparsity_target", "sparsity_measured", "params_total",
    "params_nonzero", "flops_dense", "flops_effective", "clean_acc", "pgd_acc", "autoattack_acc",
    "n_examples", "norm", "eps",
]
INPUT_COLUMNS = {
    "summary": SUMMARY_COLUMNS,
    "layer_sparsity": [
        "dataset", "arch", "seed", "method", "sparsity_target", "layer", "layer_index", "n_params", "sparsity",
    ],
    "sensitivity": [
        "dataset", "arch", "seed", "module", "module_index", "n_params", "base_loss", "perturbed_loss",
        "sensitivity",
    ],
    "training_curves": [
        "dataset", "arch", "seed", "stage", "method", "sparsity_target", "epoch", "lr", "train_loss",
        "train_acc", "val_clean_acc", "val_robust_acc", "seconds",
    ],
    # Every other column depends on the method and phase (lr, train_loss, loss_*, val_robust_acc, ...).
    "prune_curves": ["dataset", "arch", "seed", "method", "impl", "sparsity_target", "phase", "epoch"],
    "study_finetune": SUMMARY_COLUMNS + ["finetune_mode"],
    "study_objectives": SUMMARY_COLUMNS + ["pretrain_objective", "finetune_objective"],
    "per_point": ["table", "dataset", "arch", "seed", "method", "sparsity_target", "metric", "correct"],
    # HO-FMN's distances of one record, space-separated in the split's order ("inf": none found)
    "distances": ["table", "dataset", "arch", "seed", "method", "sparsity_target", "norm", "eps", "distances"],
}
# What made each model (scripts/aggregate.py MODEL_COLUMNS; the fine-tuning settings are `ft_<key>`, as many as the records have).
MODEL_TEXT_COLUMNS = ("structure", "locality", "allocation", "ranking", "schedule", "convergence", "prune_objective")
# Columns newer aggregates write and older tables lack; a missing one reads as empty (impl: the method key).
_SUMMARY_OPTIONAL = ("impl", "structured", "latency_ms", "latency_dense_ms", "verified_acc", "hofmn_acc", "points_sha256", "converged",
                     *MODEL_TEXT_COLUMNS)
OPTIONAL_COLUMNS = {"summary": _SUMMARY_OPTIONAL, "layer_sparsity": ("impl",), "distances": ("impl",),
                    "study_finetune": _SUMMARY_OPTIONAL, "study_objectives": _SUMMARY_OPTIONAL}
# Free-form names: read back as numbers they would break sorting and labels.
TEXT_COLUMNS = ("dataset", "arch", "method", "impl", "layer", "module", "stage", "phase", "finetune_mode",
                "pretrain_objective", "finetune_objective", "table", "metric", "points_sha256", *MODEL_TEXT_COLUMNS,
                "ft_objective", "ft_schedule", "ft_attack")
# Read as text from the start: a string of 0s and 1s read as a number loses its leading zeros.
_STRING_DTYPES = {"correct": str, "points_sha256": str, "distances": str}

# The accuracy columns of the summary and their display names, in table order.
METRICS = {"clean_acc": "Clean", "pgd_acc": "PGD", "autoattack_acc": "AutoAttack", "verified_acc": "Verified", "hofmn_acc": "HO-FMN"}
NOT_COMPUTED = "not computed"
KEYS = ["dataset", "arch", "method", "sparsity_target"]
FINETUNE_MODES = ("none", "natural", "adversarial")
OBJECTIVES = ("natural", "pgd_at", "trades", "mart", "ibp", "crown_ibp")


def read_table(tables_dir: str, name: str) -> pd.DataFrame:
    """`<tables_dir>/<name>.csv`, or an empty frame with the expected columns when the file is missing or empty
    (the callers then draw a "no data" figure); a file that lacks a column is an error in `aggregate`."""
    path = os.path.join(tables_dir, f"{name}.csv")
    columns = INPUT_COLUMNS[name]
    try:
        df = pd.read_csv(path, dtype=_STRING_DTYPES)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        log.warning("%s is missing or empty; treating it as having no rows", path)
        df = pd.DataFrame(columns=columns)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path} lacks columns {missing}")
    for col in OPTIONAL_COLUMNS.get(name, ()):
        if col not in df.columns:
            df[col] = float("nan")
    for col in TEXT_COLUMNS:
        if col in df.columns:
            df[col] = df[col].map(lambda v: v if pd.isna(v) else str(v)).astype(object)
    if "impl" in df.columns:
        # Dense models have no implementation; a key without one is its own implementation.
        df["impl"] = df["impl"].fillna(df["method"])
    for col in ("structured", "converged"):
        if col in df.columns:
            df[col] = df[col].map(_as_bool).astype(object)
    return df


def _as_bool(value):
    """CSV booleans ("True", "false", 1) as bool; an empty cell stays NaN (not known)."""
    if pd.isna(value):
        return float("nan")
    if isinstance(value, str):
        if value.strip().lower() in ("true", "1", "yes"):
            return True
        if value.strip().lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"not a boolean: {value!r}")
    return bool(value)


def ordered(values, known) -> list:
    """Distinct values: those in `known` in its order, then the others alphabetically (NaN left out)."""
    present = {v for v in values if not pd.isna(v)}
    return [v for v in known if v in present] + sorted(present - set(known))


def _sort(table: pd.DataFrame, columns: list[str], orders: dict[str, list]) -> pd.DataFrame:
    """Sort by `columns`; those in `orders` by position in their list rather than alphabetically."""
    def key(series: pd.Series) -> pd.Series:
        if series.name in orders:
            rank = {v: i for i, v in enumerate(orders[series.name])}
            return series.map(lambda v: rank.get(v, len(rank)))
        return series
    return table.sort_values(columns, key=key, ignore_index=True)


def _short(metric: str) -> str:
    return metric.removesuffix("_acc")


def _accuracy_stats(df: pd.DataFrame, keys: list[str], metrics=METRICS) -> pd.DataFrame:
    """Per group of `keys` (NaN keys kept): seeds, then per metric in % the mean over seeds, its 95 % interval
    (`advprune.stats.accuracy_interval`: t over seeds, or Wilson over one seed's points) and the std (NaN for
    one seed)."""
    df = df.assign(**{m: math.nan for m in metrics if m not in df})  # not in the records: not computed
    rows = []
    for key, group in df.groupby(keys, sort=False, dropna=False):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)), n_seeds=group["seed"].nunique())
        for m in metrics:
            values = group[m].astype(float)
            ci = accuracy_interval(values, group["n_examples"])
            row |= {f"{_short(m)}_pct": 100 * ci.mean, f"{_short(m)}_pct_lo": 100 * ci.lo, f"{_short(m)}_pct_hi": 100 * ci.hi,
                    f"{_short(m)}_pct_std": 100 * values.std()}
        rows.append(row)
    return pd.DataFrame(rows, columns=[*keys, "n_seeds", *_metric_columns(metrics)])


def _metric_columns(metrics) -> list[str]:
    return [f"{_short(m)}_pct{suffix}" for m in metrics for suffix in ("", "_lo", "_hi", "_std")]


def robustness_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per dataset/arch/method/target sparsity: accuracies in % (mean over seeds with 95 % interval),
    measured sparsity in %, nonzero parameters, and the FLOPs reduction factor relative to the dense model."""
    df = summary.assign(flops_reduction=summary["flops_dense"] / summary["flops_effective"],
                        sparsity_measured=100 * summary["sparsity_measured"])
    sizes = df.groupby(KEYS, sort=False).agg(
        sparsity_measured_pct=("sparsity_measured", "mean"),
        params_nonzero=("params_nonzero", "mean"),
        flops_reduction=("flops_reduction", "mean"),
    ).reset_index()
    out = _accuracy_stats(df, KEYS).merge(sizes, on=KEYS, how="left")
    out["sparsity_target_pct"] = 100 * out.pop("sparsity_target")
    out = _sort(out, ["dataset", "arch", "sparsity_target_pct", "method"],
                {"method": sort_methods(out["method"])})
    columns = ["dataset", "arch", "method", "sparsity_target_pct", "sparsity_measured_pct", "n_seeds"]
    return out[columns + _metric_columns(METRICS) + ["params_nonzero", "flops_reduction"]]


def finetune_study_table(study: pd.DataFrame) -> pd.DataFrame:
    """One row per dataset/arch/target sparsity/criterion/fine-tuning mode (dense models, if any, lead)."""
    out = _accuracy_stats(study, ["dataset", "arch", "sparsity_target", "method", "finetune_mode"])
    out["sparsity_target_pct"] = 100 * out.pop("sparsity_target")
    out = _sort(out, ["dataset", "arch", "sparsity_target_pct", "method", "finetune_mode"],
                {"method": sort_methods(out["method"]), "finetune_mode": list(FINETUNE_MODES)})
    columns = ["dataset", "arch", "method", "finetune_mode", "sparsity_target_pct", "n_seeds"]
    return out[columns + _metric_columns(METRICS)]


# Sehwag et al. 2019 report all three; verified is empty ("not computed") where the records have none.
RETAINED = {"clean_acc": "benign (clean)", "autoattack_acc": "robust (AutoAttack)", "verified_acc": "verifiable (IBP / CROWN-IBP)"}
_OBJECTIVE_KEYS = ["dataset", "arch", "seed", "pretrain_objective"]


def retained_per_seed(study: pd.DataFrame) -> pd.DataFrame:
    """The pruned rows of the objective study with the accuracies of the dense model of the same dataset, arch,
    seed and *pretraining* objective (`dense_<metric>`) and the fractions of them kept (`retained_<metric>`);
    NaN where that dense model is missing or has zero accuracy (or the records have no such metric)."""
    study = study.reindex(columns=[*study.columns, *(m for m in RETAINED if m not in study)])
    is_dense = study["method"] == DENSE
    dense = study[is_dense].groupby(_OBJECTIVE_KEYS)[list(RETAINED)].mean().add_prefix("dense_").reset_index()
    pruned = study[~is_dense].merge(dense, on=_OBJECTIVE_KEYS, how="left", validate="many_to_one")
    for metric in RETAINED:
        dense_acc = pruned[f"dense_{metric}"]
        # A naturally trained dense model has no robust accuracy to retain: the fraction is undefined, not inf.
        pruned[f"retained_{metric}"] = pruned[metric] / dense_acc.where(dense_acc > 0)
    return pruned


def retained_estimate(pruned: pd.DataFrame, dense: pd.DataFrame, metric: str, index: PointIndex,
                      table: str = "study_objectives"):
    """Fraction of the dense model's `metric` that the pruned model keeps, as the mean over their common seeds
    of pruned / dense, with a 95 % bootstrap interval (paired over the test points when both have per-point
    results on the same points; see `advprune.stats.bootstrap`). None without a common seed or when a dense
    accuracy is 0 or missing (nothing to retain)."""
    seeds = sorted(set(pruned["seed"]) & set(dense["seed"]))
    pruned, dense = pruned[pruned["seed"].isin(seeds)], dense[dense["seed"].isin(seeds)]
    if metric not in dense or not seeds or len(pruned) != len(seeds) or len(dense) != len(seeds) or not (dense[metric].astype(float) > 0).all():
        return None
    models = index.models({"pruned": (table, pruned), "dense": (table, dense)}, metric)
    return bootstrap(models, lambda acc: (acc["pruned"] / acc["dense"]).mean(axis=1))


def objective_study_table(study: pd.DataFrame, per_point: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per dataset/arch/method/target sparsity/pretraining -> fine-tuning objective: the dense model's
    accuracy (same pretraining objective), the pruned model's with its interval, and the retained fraction in %
    (mean of the per-seed ratios, with the 95 % bootstrap interval of `retained_estimate`, and their std)."""
    per_seed = retained_per_seed(study)
    keys = ["dataset", "arch", "method", "sparsity_target", "pretrain_objective", "finetune_objective"]
    retained = {f"retained_{m}": None for m in RETAINED}
    out = _accuracy_stats(per_seed, keys, RETAINED)
    index = PointIndex(per_point)
    is_dense = study["method"] == DENSE
    rows = []
    for key, group in per_seed.groupby(keys, sort=False, dropna=False):
        dataset, arch, _, _, pretrain, _ = key
        dense_rows = study[is_dense & (study["dataset"] == dataset) & (study["arch"] == arch) & (study["pretrain_objective"] == pretrain)]
        row = {}
        for m in RETAINED:
            est = retained_estimate(group, dense_rows, m, index)
            short = _short(f"retained_{m}")
            row |= {f"{short}_pct": 100 * est.value if est else math.nan, f"{short}_pct_lo": 100 * est.lo if est else math.nan,
                    f"{short}_pct_hi": 100 * est.hi if est else math.nan, f"{short}_pct_std": 100 * group[f"retained_{m}"].std()}
        rows.append(row)
    out = pd.concat([out, pd.DataFrame(rows, index=out.index, columns=_metric_columns(retained))], axis=1)
    dense = per_seed.groupby(keys, sort=False, dropna=False)[[f"dense_{m}" for m in RETAINED]].mean()
    dense = (100 * dense).rename(columns={f"dense_{m}": f"dense_{_short(m)}_pct" for m in RETAINED})
    out = out.merge(dense.reset_index(), on=keys, how="left")
    out["sparsity_target_pct"] = 100 * out.pop("sparsity_target")
    out = _sort(out, ["dataset", "arch", "method", "sparsity_target_pct", "pretrain_objective", "finetune_objective"],
                {"pretrain_objective": ordered(out["pretrain_objective"], OBJECTIVES),
                 "finetune_objective": ordered(out["finetune_objective"], OBJECTIVES)})
    columns = ["dataset", "arch", "method", "pretrain_objective", "finetune_objective", "sparsity_target_pct",
               "n_seeds", *[f"dense_{_short(m)}_pct" for m in RETAINED]]
    return out[columns + _metric_columns(RETAINED) + _metric_columns(retained)]


def latency_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The models with a measured CPU latency, except those marked unstructured (their zeros do not make them
    faster), and the dense models: nonzero parameters, effective FLOPs, latency and speed-up over the dense
    model measured alongside (mean and std over seeds)."""
    timed = summary["latency_ms"].notna() & (~summary["structured"].eq(False) | (summary["method"] == DENSE))
    df = summary[timed].assign(
        speedup=lambda d: d["latency_dense_ms"] / d["latency_ms"],
        flops_reduction=lambda d: d["flops_dense"] / d["flops_effective"],
    )
    out = df.groupby(KEYS, sort=False).agg(
        n_seeds=("seed", "nunique"),
        params_nonzero=("params_nonzero", "mean"),
        flops_effective=("flops_effective", "mean"),
        flops_reduction=("flops_reduction", "mean"),
        latency_ms=("latency_ms", "mean"),
        latency_ms_std=("latency_ms", "std"),
        latency_dense_ms=("latency_dense_ms", "mean"),
        speedup=("speedup", "mean"),
        speedup_std=("speedup", "std"),
    ).reset_index()
    out["sparsity_target_pct"] = 100 * out.pop("sparsity_target")
    out = _sort(out, ["dataset", "arch", "sparsity_target_pct", "method"], {"method": sort_methods(out["method"])})
    return out[["dataset", "arch", "method", "sparsity_target_pct", "n_seeds", "params_nonzero", "flops_effective",
                "flops_reduction", "latency_ms", "latency_ms_std", "latency_dense_ms", "speedup", "speedup_std"]]


def _num(x: float, digits: int = 2) -> str | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _mean_std(mean: float, std: float, pm: str, digits: int = 2) -> str:
    m = _num(mean, digits)
    if m is None:
        return "n/a"
    s = _num(std, digits)
    return m if s is None else f"{m}{pm}{s}"


def _text(value) -> str:
    return "–" if pd.isna(value) else str(value)


def _count(value) -> str:
    return "n/a" if pd.isna(value) else f"{value:,.0f}"


# A display turns a report table into (header, formatted rows, number of leading text columns); `pm` and `times`
# are the format's plus-minus and multiplication signs.
Display = Callable[[pd.DataFrame, str, str], tuple[list[str], list[list[str]], int]]


def interval_text(mean: float, lo: float, hi: float, missing: str = NOT_COMPUTED, digits: int = 1) -> str:
    """"71.3 [66.4, 75.8]"; the mean alone where the interval is unknown; `missing` where the mean is."""
    m = _num(mean, digits)
    if m is None:
        return missing
    lo, hi = _num(lo, digits), _num(hi, digits)
    return m if lo is None or hi is None else f"{m} [{lo}, {hi}]"


def _metric_cells(r, metrics, pm: str, missing: str = NOT_COMPUTED) -> list[str]:
    return [interval_text(*(getattr(r, f"{_short(m)}_pct{s}") for s in ("", "_lo", "_hi")), missing) for m in metrics]


def robustness_display(table: pd.DataFrame, pm: str, times: str):
    header = ["Dataset", "Arch", "Method", "Target sparsity (%)", "Measured sparsity (%)", "Seeds"]
    header += [f"{name} acc. (%)" for name in METRICS.values()] + ["Nonzero params", "FLOPs reduction"]
    rows = []
    for r in table.itertuples(index=False):
        cells = [r.dataset, r.arch, r.method, f"{r.sparsity_target_pct:g}", _num(r.sparsity_measured_pct) or "n/a",
                 str(r.n_seeds)]
        cells += _metric_cells(r, METRICS, pm)
        cells += [_count(r.params_nonzero), f"{_num(r.flops_reduction, 1) or 'n/a'}{times}"]
        rows.append(cells)
    return header, rows, 3


def finetune_study_display(table: pd.DataFrame, pm: str, times: str):
    header = ["Dataset", "Arch", "Criterion", "Fine-tuning", "Target sparsity (%)", "Seeds"]
    header += [f"{name} acc. (%)" for name in METRICS.values()]
    rows = [[r.dataset, r.arch, r.method, _text(r.finetune_mode), f"{r.sparsity_target_pct:g}", str(r.n_seeds),
             *_metric_cells(r, METRICS, pm)] for r in table.itertuples(index=False)]
    return header, rows, 4


def objective_study_display(table: pd.DataFrame, pm: str, times: str):
    header = ["Dataset", "Arch", "Method", "Pretraining", "Fine-tuning", "Target sparsity (%)", "Seeds",
              "Dense clean acc. (%)", "Dense AA acc. (%)", "Clean acc. (%)", "AA acc. (%)",
              "Clean retained (%)", "AA retained (%)"]
    retained = [f"retained_{m}" for m in RETAINED]
    rows = [[r.dataset, r.arch, r.method, _text(r.pretrain_objective), _text(r.finetune_objective),
             f"{r.sparsity_target_pct:g}", str(r.n_seeds), _num(r.dense_clean_pct) or "n/a",
             _num(r.dense_autoattack_pct) or "n/a", *_metric_cells(r, RETAINED, pm), *_metric_cells(r, retained, pm, "n/a")]
            for r in table.itertuples(index=False)]
    return header, rows, 5


def latency_display(table: pd.DataFrame, pm: str, times: str):
    header = ["Dataset", "Arch", "Method", "Target sparsity (%)", "Seeds", "Nonzero params", "Effective FLOPs",
              "FLOPs reduction", "Latency (ms)", "Dense latency (ms)", "Speed-up"]
    rows = [[r.dataset, r.arch, r.method, f"{r.sparsity_target_pct:g}", str(r.n_seeds), _count(r.params_nonzero),
             _count(r.flops_effective), f"{_num(r.flops_reduction, 1) or 'n/a'}{times}",
             _mean_std(r.latency_ms, r.latency_ms_std, pm, 3), _num(r.latency_dense_ms, 3) or "n/a",
             f"{_mean_std(r.speedup, r.speedup_std, pm)}{times}"]
            for r in table.itertuples(index=False)]
    return header, rows, 3


# Report table name -> (builder from the aggregated table, display). `advprune.report.TABLES` names the inputs.
BUILDERS: dict[str, tuple[Callable[[pd.DataFrame], pd.DataFrame], Display]] = {
    "robustness": (robustness_table, robustness_display),
    "finetune_study": (finetune_study_table, finetune_study_display),
    "objective_study": (objective_study_table, objective_study_display),
    "latency": (latency_table, latency_display),
}


def to_markdown(table: pd.DataFrame, display: Display = robustness_display) -> str:
    header, rows, n_text = display(table, " ± ", "×")
    align = ["---"] * n_text + ["---:"] * (len(header) - n_text)
    lines = [header, align] + [[c.replace("|", r"\|") for c in row] for row in rows]
    return "".join("| " + " | ".join(line) + " |\n" for line in lines)


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_TEX_SYMBOLS = {"–": "--", "→": r"$\to$"}


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch) or _TEX_SYMBOLS.get(ch, ch) for ch in text)


def to_latex(table: pd.DataFrame, display: Display = robustness_display) -> str:
    """A booktabs tabular (needs \\usepackage{booktabs}), with a rule between dataset/arch blocks."""
    header, rows, n_text = display(table, "@@PM@@", "@@TIMES@@")

    def cell(text: str) -> str:
        return tex_escape(text).replace("@@PM@@", r" $\pm$ ").replace("@@TIMES@@", r"$\times$")

    # A display may set its own column spec (e.g. wrapping paragraph columns for long text).
    spec = getattr(display, "tex_columns", "l" * n_text + "r" * (len(header) - n_text))
    lines = [r"\begin{tabular}{" + spec + "}", r"\toprule",
             " & ".join(cell(h) for h in header) + r" \\", r"\midrule"]
    previous = None
    for row in rows:
        if previous is not None and row[:2] != previous:
            lines.append(r"\midrule")
        previous = row[:2]
        lines.append(" & ".join(cell(c) for c in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_table(table: pd.DataFrame, stem: str, display: Display = robustness_display) -> list[str]:
    """`stem.csv` (numbers, 4 decimals), `stem.md` and `stem.tex`; returns the paths."""
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    table.round(4).to_csv(f"{stem}.csv", index=False)
    for ext, render in (("md", to_markdown), ("tex", to_latex)):
        with open(f"{stem}.{ext}", "w", encoding="utf-8") as fh:
            fh.write(render(table, display))
    return [f"{stem}.{ext}" for ext in ("csv", "md", "tex")]
