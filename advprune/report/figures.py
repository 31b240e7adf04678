"""The report's figures, each built from the aggregated tables named in `advprune.report.FIGURES` (passed in
that order) and returned as an unsaved Figure.

Every function expects non-empty tables (`make_report` draws a "no data" figure otherwise) and raises `NoData`
when they hold nothing it can draw (no HARP model, say). Panels are laid out one row per (dataset, arch) or finer.
Curves, points and bars are means over seeds. Accuracies on the test points (robustness vs sparsity, the two
studies) carry 95 % intervals: Student-t over seeds when there are several, else Wilson over the test points
(`advprune.stats.accuracy_interval`); retained fractions a bootstrap interval (`tables.retained_estimate`). The
other error bars and bands (training curves, per-layer sparsity, loss terms, security curves) are one standard
deviation over seeds, drawn only where there is more than one seed. A verified-accuracy panel appears once records
have `verified_acc`, an HO-FMN panel once they have `hofmn_acc`.

Choices in the study figures:
- harp_layer_rates compares HARP's per-layer density with the flat line at 1 - target: under the uniform
  layer-wise allocation (lwm with scope layer) every prunable layer has exactly that density, while which lwm key
  is layer-wise cannot be told from the tables.
- security_curves draws ε from 0 to SECURITY_EPS_RANGE times the threat model's ε (the benchmark draws its 8/255
  curves to 0.15, about 4.8 times), so panels of one dataset share a scale set by the threat model, not by the
  least robust model.
- pwoa_loss_terms plots every `loss_*` column the PwoA curves carry (and the total, train_loss) on a log axis where
  all are positive, else on a symmetric log axis (linear around zero), so terms of different scale stay visible.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from advprune.security.curves import parse_distances, robust_accuracy
from advprune.stats import accuracy_interval

from .style import (
    DENSE,
    DENSE_COLOR,
    attack_point,
    category_color,
    compression_label,
    method_color,
    method_handles,
    method_marker,
    new_figure,
    pct_label,
    sort_methods,
    sparsity_axis,
)
from .tables import FINETUNE_MODES, METRICS, OBJECTIVES, RETAINED, objective_study_table, ordered

NEUTRAL = "#4d4d4d"  # for bars that belong to no method
# Increasing training effort in increasingly dark blues; method colours are kept for methods.
FINETUNE_MODE_COLORS = {"none": "#c6dbef", "natural": "#6baed6", "adversarial": "#08519c"}
RETAINED_COLORS = {"clean_acc": "#9ecae1", "autoattack_acc": "#b2182b", "verified_acc": "#4d9221"}
UNIFORM_COLOR = "#4d4d4d"
LOSS_TERM_COLORS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#1f78b4")
PRUNE_PHASES = ("admm", "retrain")  # PwoA's, in the order they run
SECURITY_EPS_RANGE = 4.0  # security curves run from ε = 0 to this multiple of the threat model's ε
SECURITY_GRID = 201  # ε values per curve


class NoData(Exception):
    """The tables hold nothing this figure can show; the message says why."""


def _panels(df: pd.DataFrame) -> list[tuple[tuple[str, str], pd.DataFrame]]:
    return list(df.groupby(["dataset", "arch"], sort=True))


def _eps_label(eps) -> str:
    try:
        eps = float(eps)
    except ValueError:
        return str(eps)
    k = eps * 255
    # Image-space radii are conventionally quoted in 1/255 steps (8/255), not as 0.0313725.
    return f"{round(k)}/255" if eps < 1 and abs(k - round(k)) < 1e-6 else f"{eps:g}"


def _threat(df: pd.DataFrame) -> str:
    pairs = df[["norm", "eps"]].drop_duplicates().itertuples(index=False)
    return "; ".join(f"{norm}, ε={_eps_label(eps)}" for norm, eps in pairs)


def _mean_std(df: pd.DataFrame, by, col: str, scale: float = 1.0) -> pd.DataFrame:
    """Mean and std (NaN for one seed) of `col` over seeds, indexed by `by`, sorted."""
    return (scale * df.groupby(by)[col].agg(["mean", "std"])).sort_index()


def _mean_ci(df: pd.DataFrame, by, metric: str) -> pd.DataFrame:
    """Mean accuracy in % over seeds with its 95 % interval (`lo`, `hi`), indexed by `by`, sorted."""
    rows = {key: accuracy_interval(g[metric], g["n_examples"]) for key, g in df.groupby(by)}
    return pd.DataFrame({"mean": [100 * ci.mean for ci in rows.values()], "lo": [100 * ci.lo for ci in rows.values()],
                         "hi": [100 * ci.hi for ci in rows.values()]}, index=list(rows)).sort_index()


def _yerr(stats: pd.DataFrame):
    """Asymmetric error bars from `lo`/`hi` (none where the interval is unknown)."""
    if stats["lo"].isna().all():
        return None
    return np.vstack([(stats["mean"] - stats["lo"]).fillna(0).clip(lower=0), (stats["hi"] - stats["mean"]).fillna(0).clip(lower=0)])


def _computed(df: pd.DataFrame, metrics: dict) -> dict:
    """The metrics some row has (verified accuracy only once verification ran)."""
    return {m: name for m, name in metrics.items() if m in df and df[m].notna().any()}


def _line_band(ax: Axes, stats: pd.DataFrame, **style) -> None:
    ax.plot(stats.index, stats["mean"], **style)
    if stats["std"].notna().any():
        ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"],
                        color=style["color"], alpha=0.15, linewidth=0)


def _dense_reference(ax: Axes, mean: float, std: float, lo: float | None = None, hi: float | None = None) -> None:
    """Dashed line at the dense model's mean; a band over its interval [lo, hi] where given, else ± std."""
    ax.axhline(mean, color=DENSE_COLOR, linestyle="--", linewidth=1.2, zorder=1)
    if lo is None or np.isnan(lo):
        lo, hi = (mean - std, mean + std) if std > 0 else (None, None)
    if lo is not None:
        ax.axhspan(lo, hi, color=DENSE_COLOR, alpha=0.07, linewidth=0, zorder=0)


def _empty_panel(ax: Axes, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _legend(fig: Figure, handles: list[Line2D], title: str = "Method") -> None:
    # Outside the panels, so it never covers data.
    fig.legend(handles=handles, loc="outside right upper", title=title, frameon=False)


def _categorical_x(ax: Axes, names: list[str], xlabel: str) -> None:
    ax.set_xticks(range(len(names)), labels=names, rotation=90, fontsize=7)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", visible=False)


def robustness_vs_sparsity(summary: pd.DataFrame) -> Figure:
    panels = _panels(summary)
    metrics = _computed(summary, METRICS)
    fig, axes = new_figure(len(panels), len(metrics))
    for row, ((dataset, arch), df) in enumerate(panels):
        targets = sorted(df.loc[df["method"] != DENSE, "sparsity_target"].unique())
        for col, (metric, name) in enumerate(metrics.items()):
            ax = axes[row, col]
            for method in sort_methods(df["method"]):
                stats = _mean_ci(df[df["method"] == method].dropna(subset=[metric]), "sparsity_target", metric)
                if stats.empty:
                    continue
                if method == DENSE:
                    _dense_reference(ax, stats["mean"].iloc[0], 0.0, stats["lo"].iloc[0], stats["hi"].iloc[0])
                    continue
                ax.errorbar(100 * stats.index, stats["mean"], yerr=_yerr(stats),
                            color=method_color(method), marker=method_marker(method), markersize=5,
                            capsize=3, linewidth=1.4, label=method)
            if targets:
                sparsity_axis(ax, targets)
            threat = "" if metric == "clean_acc" else f" ({_threat(df)})"
            ax.set_title(f"{dataset} / {arch}: {name}{threat}")
            ax.set_xlabel("Target sparsity (%)")
            ax.set_ylabel(f"{name} accuracy (%)")
    _legend(fig, method_handles(summary["method"]))
    fig.suptitle("Accuracy vs. sparsity, 95 % intervals (dashed and band: dense model; x axis ∝ −log(1 − sparsity))")
    return fig


def security_curves(summary: pd.DataFrame, distances: pd.DataFrame) -> Figure:
    """Robust accuracy against ε read from HO-FMN's minimum-norm distances (`distances.csv`): one row of panels
    per (dataset, arch), one panel per target sparsity, a line per method (mean over seeds, ± std band where there
    are several), the dense model dashed in every panel. At the threat model's ε (dotted) each model's AutoAttack
    accuracy from the summary, an open marker with its 95 % interval: a curve above its marker is what the
    minimum-norm attack misses of AutoAttack at that ε."""
    curves = distances[distances["table"] == "summary"]
    if curves.empty:
        raise NoData("distances.csv has no HO-FMN distances of the main grid (evaluate.hofmn is null)")
    is_dense = curves["method"] == DENSE
    targets = sorted(curves.loc[~is_dense, "sparsity_target"].unique()) or [0.0]
    panels = _panels(curves)
    fig, axes = new_figure(len(panels), len(targets), panel_w=3.4, panel_h=2.8)
    for row, ((dataset, arch), df) in enumerate(panels):
        threat_eps = sorted(df["eps"].astype(float).unique())
        grid = np.linspace(0.0, SECURITY_EPS_RANGE * threat_eps[-1], SECURITY_GRID)
        for col, target in enumerate(targets):
            ax = axes[row, col]
            title = f"{dataset} / {arch}: " + ("dense" if target == 0 else f"{pct_label(target)}% target")
            models = df[np.isclose(df["sparsity_target"], target) | (df["method"] == DENSE)]
            if models.empty:
                _empty_panel(ax, title)
                continue
            for method in sort_methods(models["method"]):
                runs = models[models["method"] == method]
                acc = 100 * np.stack([robust_accuracy(parse_distances(d), grid) for d in runs["distances"]])
                stats = pd.DataFrame({"mean": acc.mean(axis=0), "std": acc.std(axis=0, ddof=1) if len(acc) > 1 else np.nan}, index=grid)
                _line_band(ax, stats, color=method_color(method), linestyle="--" if method == DENSE else "-", linewidth=1.4)
                point = summary[(summary["dataset"] == dataset) & (summary["arch"] == arch) & (summary["method"] == method)
                                & np.isclose(summary["sparsity_target"], runs["sparsity_target"].iloc[0])].dropna(subset=["autoattack_acc"])
                if not point.empty:
                    ci = _mean_ci(point, "method", "autoattack_acc")
                    ax.errorbar([float(runs["eps"].iloc[0])], ci["mean"], yerr=_yerr(ci), capsize=3, zorder=4, **attack_point(method))
            for eps in threat_eps:
                ax.axvline(eps, color="0.4", linestyle=":", linewidth=1, zorder=0)
            ax.set_xlim(0, grid[-1])
            ax.set_ylim(0, 102)
            ax.set_title(title)
            ax.set_xlabel("L∞ perturbation size ε")
            ax.set_ylabel("Robust accuracy (%)")
    _legend(fig, method_handles(curves["method"])
            + [Line2D([], [], **{**attack_point(DENSE), "color": NEUTRAL}, label="AutoAttack at ε\n(95 % interval)"),
               Line2D([], [], color="0.4", linestyle=":", label=f"threat model ε\n({_threat(curves)})")])
    fig.suptitle("Security curves: robust accuracy vs. ε\nfrom HO-FMN's minimum-norm L∞ distances")
    return fig


def _target_panels(data: pd.DataFrame, draw: Callable[[Axes, float, pd.DataFrame, pd.DataFrame], None],
                   panel_w: float, panel_h: float) -> Figure:
    """One row of panels per (dataset, arch), one column per target sparsity. `draw(ax, target, rows, panel)`
    draws the rows at that target (`panel`: all rows of the (dataset, arch)), then the panel gets its title; a
    panel without rows says so."""
    panels = _panels(data)
    targets = sorted(data["sparsity_target"].unique())
    fig, axes = new_figure(len(panels), len(targets), panel_w=panel_w, panel_h=panel_h)
    for row, ((dataset, arch), df) in enumerate(panels):
        for col, target in enumerate(targets):
            ax = axes[row, col]
            title = f"{dataset} / {arch}: {pct_label(target)}% target"
            at_target = df[np.isclose(df["sparsity_target"], target)]
            if at_target.empty:
                _empty_panel(ax, title)
                continue
            draw(ax, target, at_target, df)
            ax.set_title(title)
    return fig


def _per_layer_figure(layers: pd.DataFrame, draw: Callable[[Axes, float, pd.DataFrame, dict[str, int]], None]) -> Figure:
    """_target_panels wide enough for the layers: `draw(ax, target, rows, position)` draws each layer at
    x = position[layer] (network order, by layer_index), and the x axis is labelled with the layer names."""

    def draw_layers(ax, target, at_target, panel):
        order = panel.groupby("layer")["layer_index"].min().sort_values().index.tolist()
        draw(ax, target, at_target, {layer: i for i, layer in enumerate(order)})
        _categorical_x(ax, order, "Layer (network order)")

    n_layers = layers.groupby(["dataset", "arch"])["layer"].nunique().max()
    return _target_panels(layers, draw_layers, panel_w=max(3.4, 0.16 * n_layers + 1.2), panel_h=3.4)


def layer_sparsity(layers: pd.DataFrame) -> Figure:
    def draw(ax, target, at_target, position):
        methods = sort_methods(at_target["method"])
        for k, method in enumerate(methods):
            stats = _mean_std(at_target[at_target["method"] == method], "layer", "sparsity", 100)
            # Layer-wise methods give identical per-layer sparsities; a small sideways shift per method keeps
            # every line visible instead of the last one drawn hiding the others.
            stats.index = stats.index.map(position) + 0.12 * (k - (len(methods) - 1) / 2)
            stats = stats.sort_index()
            ax.errorbar(stats.index, stats["mean"], alpha=0.85,
                        yerr=stats["std"].fillna(0) if stats["std"].notna().any() else None,
                        color=method_color(method), marker=method_marker(method), markersize=4,
                        linewidth=1.2, capsize=2, label=method)
        ax.axhline(100 * target, color="0.5", linestyle=":", linewidth=1, zorder=0)
        ax.set_ylim(-3, 103)
        ax.set_ylabel("Layer sparsity (%)")

    fig = _per_layer_figure(layers, draw)
    _legend(fig, method_handles(layers["method"]))
    fig.suptitle("Per-layer sparsity of the pruned models (dotted: target sparsity)")
    return fig


def sensitivity(sens: pd.DataFrame) -> Figure:
    panels = _panels(sens)
    n_modules = sens.groupby(["dataset", "arch"])["module"].nunique().max()
    fig, axes = new_figure(len(panels), 1, panel_w=max(5.0, 0.3 * n_modules + 1.5), panel_h=3.4)
    for row, ((dataset, arch), df) in enumerate(panels):
        ax = axes[row, 0]
        order = df.groupby("module")["module_index"].min().sort_values().index.tolist()
        stats = _mean_std(df, "module", "sensitivity").reindex(order)
        has_std = stats["std"].notna().any()
        ax.bar(range(len(order)), stats["mean"], yerr=stats["std"].fillna(0) if has_std else None,
               color=NEUTRAL, capsize=2, width=0.7)
        positive = stats["mean"][stats["mean"] > 0]
        # Sensitivities of early and late layers can differ by orders of magnitude; a linear axis would
        # flatten all but the largest bars (a log axis is only possible when every bar is positive).
        if len(positive) == len(stats) and positive.max() / positive.min() > 100:
            ax.set_yscale("log")
        ax.set_title(f"{dataset} / {arch}: robustness sensitivity per module (dense model)")
        ax.set_ylabel("Increase of adversarial loss")
        _categorical_x(ax, order, "Module (network order)")
    return fig


def training_curves(curves: pd.DataFrame) -> Figure:
    panels = _panels(curves)
    finetune = curves[curves["stage"] == "finetune"]
    targets = sorted(finetune["sparsity_target"].unique())
    fig, axes = new_figure(len(panels), 2 + len(targets), panel_w=3.2)
    for row, ((dataset, arch), df) in enumerate(panels):
        pre = df[df["stage"] == "pretrain"]
        ax_loss, ax_acc = axes[row, 0], axes[row, 1]
        final_robust = None
        if pre.empty:
            _empty_panel(ax_loss, f"{dataset} / {arch}: pretraining loss")
            _empty_panel(ax_acc, f"{dataset} / {arch}: pretraining accuracy")
        else:
            _line_band(ax_loss, _mean_std(pre, "epoch", "train_loss"), color=DENSE_COLOR)
            ax_loss.set_title(f"{dataset} / {arch}: pretraining loss")
            ax_loss.set_ylabel("Training loss (adversarial objective)")
            for col, style, label in (("val_clean_acc", "-", "clean"), ("val_robust_acc", "--", "robust (PGD)")):
                _line_band(ax_acc, _mean_std(pre, "epoch", col, 100), color=DENSE_COLOR, linestyle=style, label=label)
            ax_acc.set_title(f"{dataset} / {arch}: pretraining accuracy")
            ax_acc.set_ylabel("Validation accuracy (%)")
            ax_acc.legend(loc="lower right", fontsize=7)
            final_robust = _mean_std(pre[pre["epoch"] == pre["epoch"].max()], "epoch", "val_robust_acc", 100)
        for ax in (ax_loss, ax_acc):
            ax.set_xlabel("Epoch")
        for col, target in enumerate(targets, start=2):
            ax = axes[row, col]
            title = f"{dataset} / {arch}: fine-tuning at {pct_label(target)}%"
            at_target = df[(df["stage"] == "finetune") & np.isclose(df["sparsity_target"], target)]
            if at_target.empty:
                _empty_panel(ax, title)
                continue
            if final_robust is not None:
                _dense_reference(ax, final_robust["mean"].iloc[0], np.nan_to_num(final_robust["std"].iloc[0]))
            for method in sort_methods(at_target["method"]):
                stats = _mean_std(at_target[at_target["method"] == method], "epoch", "val_robust_acc", 100)
                _line_band(ax, stats, color=method_color(method), marker=method_marker(method), markersize=3,
                           label=method)
            ax.set_title(title)
            ax.set_xlabel("Epoch")
            ax.set_ylabel("Validation robust accuracy (%)")
    _legend(fig, method_handles(set(finetune["method"]) | {DENSE}))
    fig.suptitle("Training curves (fine-tuning panels, dashed: dense model after pretraining)")
    return fig


def _bar_group(ax: Axes, n_groups: int, k: int, n_bars: int, stats: pd.DataFrame, color: str, label: str) -> None:
    """Bar k of n_bars in each of n_groups groups centred on 0, 1, ...; error bars over [lo, hi] where known;
    "n/a" where the mean is NaN."""
    width = 0.8 / n_bars
    x = np.arange(n_groups) + width * (k - (n_bars - 1) / 2)
    drawn = stats["mean"].notna().to_numpy()  # a NaN bar would spoil the axis limits
    stats = stats[drawn]
    ax.bar(x[drawn], stats["mean"], 0.92 * width, color=color, label=label, zorder=2,
           yerr=_yerr(stats) if len(stats) else None, capsize=2, error_kw={"linewidth": 0.8})
    for xi in x[~drawn]:
        ax.text(xi, 0, "n/a", rotation=90, ha="center", va="bottom", fontsize=6, color="0.4",
                transform=ax.get_xaxis_transform())


def _bar_axis(ax: Axes, names: list[str], xlabel: str) -> None:
    ax.set_xticks(range(len(names)), labels=names, rotation=30 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylim(bottom=0)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", visible=False)


def finetune_study(study: pd.DataFrame) -> Figure:
    """Criterion x fine-tuning mode: clean and AutoAttack accuracy, one bar per mode in each criterion's group."""
    pruned = study[study["method"] != DENSE]
    if pruned.empty:
        raise NoData("study_finetune.csv has no pruned models")
    panels = list(pruned.groupby(["dataset", "arch", "sparsity_target"], sort=True))
    modes = ordered(pruned["finetune_mode"], FINETUNE_MODES)
    n_criteria = pruned.groupby(["dataset", "arch", "sparsity_target"])["method"].nunique().max()
    metrics = {m: METRICS[m] for m in ("clean_acc", "autoattack_acc")}
    fig, axes = new_figure(len(panels), len(metrics), panel_w=max(3.4, 0.25 * n_criteria * len(modes) + 1.2),
                           panel_h=2.8)
    for row, ((dataset, arch, target), df) in enumerate(panels):
        criteria = sort_methods(df["method"])
        dense = study[(study["method"] == DENSE) & (study["dataset"] == dataset) & (study["arch"] == arch)]
        for col, (metric, name) in enumerate(metrics.items()):
            ax = axes[row, col]
            if not dense.empty:
                ci = accuracy_interval(dense[metric], dense["n_examples"])
                _dense_reference(ax, 100 * ci.mean, 0.0, 100 * ci.lo, 100 * ci.hi)
            for k, mode in enumerate(modes):
                stats = _mean_ci(df[df["finetune_mode"] == mode], "method", metric).reindex(criteria)
                _bar_group(ax, len(criteria), k, len(modes), stats, category_color(mode, FINETUNE_MODE_COLORS), mode)
            _bar_axis(ax, criteria, "Pruning criterion")
            threat = "" if metric == "clean_acc" else f" ({_threat(df)})"
            ax.set_title(f"{dataset} / {arch}, {pct_label(target)}% sparsity: {name}{threat}")
            ax.set_ylabel(f"{name} accuracy (%)")
    handles = [Patch(color=category_color(m, FINETUNE_MODE_COLORS), label=m) for m in modes]
    if (study["method"] == DENSE).any():
        handles.append(Line2D([], [], color=DENSE_COLOR, linestyle="--", label="dense"))
    _legend(fig, handles, title="Fine-tuning")
    fig.suptitle("Pruning criterion vs. fine-tuning after pruning (bars: mean over seeds, 95 % interval)")
    return fig


def objective_study(study: pd.DataFrame, per_point: pd.DataFrame | None = None) -> Figure:
    """Per pretraining -> fine-tuning pair: % of the dense model's (same pretraining objective) clean and
    AutoAttack accuracy kept after pruning, with the bootstrap interval of `objective_study_table`."""
    table = objective_study_table(study, per_point)
    table = table[table["method"] != DENSE]
    if table.empty:
        raise NoData("study_objectives.csv has no pruned models")
    panels = list(table.groupby(["dataset", "arch", "method", "sparsity_target_pct"], sort=True))
    n_pairs = max(len(df[["pretrain_objective", "finetune_objective"]].drop_duplicates()) for _, df in panels)
    fig, axes = new_figure(len(panels), 1, panel_w=max(8.0, 0.7 * n_pairs + 3.0), panel_h=3.2)
    for row, ((dataset, arch, method, target_pct), df) in enumerate(panels):
        ax = axes[row, 0]
        pairs = [(p, f) for p in ordered(df["pretrain_objective"], OBJECTIVES)
                 for f in ordered(df[df["pretrain_objective"] == p]["finetune_objective"], OBJECTIVES)]
        names = [f"{p} → {f}" for p, f in pairs]
        df = df.set_index(df["pretrain_objective"] + " → " + df["finetune_objective"])
        ax.axhline(100, color=DENSE_COLOR, linestyle="--", linewidth=1.2, zorder=1)
        # verified accuracy only where some record has it (not computed otherwise, never drawn as zero)
        metrics = [m for m in RETAINED if df[f"retained_{m.removesuffix('_acc')}_pct"].notna().any() or m != "verified_acc"]
        for k, metric in enumerate(metrics):
            short = f"retained_{metric.removesuffix('_acc')}_pct"
            stats = df[[short, f"{short}_lo", f"{short}_hi"]].set_axis(["mean", "lo", "hi"], axis=1).reindex(names)
            _bar_group(ax, len(names), k, len(metrics), stats, RETAINED_COLORS[metric], RETAINED[metric])
        _bar_axis(ax, names, "Pretraining → fine-tuning objective")
        for label, (p, f) in zip(ax.get_xticklabels(), pairs):
            # Sehwag et al.: the matched pairs are the ones expected to keep the most.
            label.set_fontweight("bold" if p == f else "normal")
        target = target_pct / 100
        threat = _threat(study[(study["dataset"] == dataset) & (study["arch"] == arch)])
        ax.set_title(f"{dataset} / {arch}: {method} at {pct_label(target)}% sparsity "
                     f"({compression_label(target)} compression)\nrobust: AutoAttack, {threat}")
        ax.set_ylabel("Accuracy retained (% of dense)")
    _legend(fig, [Patch(color=RETAINED_COLORS[m], label=RETAINED[m]) for m in RETAINED]
            + [Line2D([], [], color=DENSE_COLOR, linestyle="--", label="dense (100 %)"),
               Line2D([], [], linestyle="none", label="n/a: no dense model,\nor its accuracy is 0")], title="Accuracy")
    fig.suptitle("Accuracy kept after pruning, in % of the dense model\n"
                 "with the same pretraining objective (bold: matched pairs)\nerror bars: 95 % bootstrap intervals")
    return fig


def _density_scale(ax: Axes, values) -> None:
    """Log where densities span more than a factor 10, else linear from 0 (to 105 % at most: at 99 % sparsity
    densities of a few % would sit flat on the axis)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.min() > 0 and values.max() / values.min() > 10:
        _log_axis(ax, "y")
    else:
        ax.set_ylim(0, min(105, 1.15 * values.max()))


def _log_axis(ax: Axes, axis: str) -> None:
    """Log scale ticked at 1, 2, 5 x 10^k with plain numbers: under two decades matplotlib would label minor
    ticks in overlapping scientific notation."""
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(LogLocator(subs=(1, 2, 5)))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


def harp_layer_rates(layers: pd.DataFrame) -> Figure:
    harp = layers[layers["impl"] == "harp"]
    if harp.empty:
        raise NoData("layer_sparsity.csv has no HARP (impl harp) models")

    def draw(ax, target, at_target, position):
        at_target = at_target.assign(density=lambda d: 1 - d["sparsity"])
        densities = [100 * (1 - target)]
        for method in sort_methods(at_target["method"]):
            stats = _mean_std(at_target[at_target["method"] == method], "layer", "density", 100)
            stats.index = stats.index.map(position)
            stats = stats.sort_index()
            ax.errorbar(stats.index, stats["mean"], yerr=stats["std"].fillna(0) if stats["std"].notna().any() else None,
                        color=method_color(method), marker=method_marker(method), markersize=4, linewidth=1.2,
                        capsize=2, label=method)
            densities += stats["mean"].tolist()
        ax.axhline(100 * (1 - target), color=UNIFORM_COLOR, linestyle=":", linewidth=1.2, label="uniform")
        _density_scale(ax, densities)
        ax.set_ylabel("Layer density, 1 − sparsity (%)")

    fig = _per_layer_figure(harp, draw)
    _legend(fig, method_handles(harp["method"])
            + [Line2D([], [], color=UNIFORM_COLOR, linestyle=":", label="uniform (1 − target)")])
    fig.suptitle("HARP's learned per-layer density vs. the uniform layer-wise allocation")
    return fig


def mrpf_sensitivity_vs_sparsity(sens: pd.DataFrame, layers: pd.DataFrame) -> Figure:
    mrpf = layers[layers["impl"] == "mrpf"]
    if mrpf.empty:
        raise NoData("layer_sparsity.csv has no MRPF (impl mrpf) models")
    sens = sens[["dataset", "arch", "seed", "module", "sensitivity"]].rename(columns={"module": "layer"})
    joined = mrpf.merge(sens, on=["dataset", "arch", "seed", "layer"])
    if joined.empty:
        raise NoData("no MRPF layer matches a module in sensitivity.csv of the same dataset, arch and seed")

    def draw(ax, target, at_target, panel):
        correlations = []
        for method in sort_methods(at_target["method"]):
            points = at_target[at_target["method"] == method].groupby("layer").agg(
                sensitivity=("sensitivity", "mean"), sparsity=("sparsity", "mean"),
                layer_index=("layer_index", "min"))
            ax.scatter(points["sensitivity"], 100 * points["sparsity"], color=method_color(method),
                       marker=method_marker(method), s=22, label=method, zorder=3)
            for p in points.itertuples():
                ax.annotate(str(p.layer_index), (p.sensitivity, 100 * p.sparsity), xytext=(3, 2),
                            textcoords="offset points", fontsize=6, color="0.35")
            rho = points["sensitivity"].corr(points["sparsity"], method="spearman")
            correlations.append(f"{method}: ρ = {'n/a' if np.isnan(rho) else f'{rho:.2f}'}")
        ax.axhline(100 * target, color=UNIFORM_COLOR, linestyle=":", linewidth=1, zorder=1)
        values = at_target["sensitivity"].to_numpy(dtype=float)
        if values.min() > 0 and values.max() / values.min() > 10:
            _log_axis(ax, "x")
        ax.text(0.98, 0.98, "\n".join(correlations), transform=ax.transAxes, ha="right", va="top", fontsize=7,
                bbox={"facecolor": "white", "alpha": 0.8, "linewidth": 0})
        ax.set_ylim(-3, 103)
        ax.set_xlabel("Module sensitivity (increase of adversarial loss)")
        ax.set_ylabel("Allocated layer sparsity (%)")

    fig = _target_panels(joined, draw, panel_w=3.6, panel_h=3.2)
    _legend(fig, method_handles(joined["method"])
            + [Line2D([], [], color=UNIFORM_COLOR, linestyle=":", label="target sparsity")])
    fig.suptitle("MRPF: allocated per-layer sparsity vs. module robustness sensitivity "
                 "(labels: layer index; ρ: Spearman rank correlation)")
    return fig


def _loss_scale(ax: Axes, values) -> None:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return
    if values.min() > 0:
        ax.set_yscale("log")
    elif (values != 0).any():
        ax.set_yscale("symlog", linthresh=float(np.abs(values[values != 0]).min()))


def pwoa_loss_terms(curves: pd.DataFrame) -> Figure:
    pwoa = curves[curves["impl"] == "pwoa"]
    if pwoa.empty:
        raise NoData("prune_curves.csv has no PwoA (impl pwoa) curves")
    terms = [c for c in pwoa.columns if c.startswith("loss_") and pwoa[c].notna().any()]
    if not terms:
        raise NoData("the PwoA curves in prune_curves.csv have no loss_* columns")
    colors = {term: LOSS_TERM_COLORS[i % len(LOSS_TERM_COLORS)] for i, term in enumerate(sorted(terms))}
    has_total = "train_loss" in pwoa.columns and pwoa["train_loss"].notna().any()
    runs = list(pwoa.groupby(["dataset", "arch", "method", "sparsity_target"], sort=True))
    phases = ordered(pwoa["phase"], PRUNE_PHASES)
    fig, axes = new_figure(len(runs), len(phases), panel_w=3.6, panel_h=2.8)
    for row, ((dataset, arch, method, target), df) in enumerate(runs):
        for col, phase in enumerate(phases):
            ax = axes[row, col]
            title = f"{dataset} / {arch}: {method} at {pct_label(target)}%\n{phase} phase"
            at_phase = df[df["phase"] == phase]
            if at_phase.empty:
                _empty_panel(ax, title)
                continue
            plotted = []
            for term in terms:
                if at_phase[term].notna().any():
                    stats = _mean_std(at_phase.dropna(subset=[term]), "epoch", term)
                    _line_band(ax, stats, color=colors[term], marker="o", markersize=3, label=term.removeprefix("loss_"))
                    plotted += stats["mean"].tolist()
            if has_total and at_phase["train_loss"].notna().any():
                stats = _mean_std(at_phase.dropna(subset=["train_loss"]), "epoch", "train_loss")
                _line_band(ax, stats, color=DENSE_COLOR, linestyle="--", label="total")
                plotted += stats["mean"].tolist()
            _loss_scale(ax, plotted)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(title)
            ax.set_xlabel("Epoch")
            ax.set_ylabel("Loss term (epoch mean)")
    handles = [Line2D([], [], color=colors[t], marker="o", markersize=3, label=t.removeprefix("loss_")) for t in terms]
    if has_total:
        handles.append(Line2D([], [], color=DENSE_COLOR, linestyle="--", label="total (train_loss)"))
    _legend(fig, handles, title="Loss term")
    fig.suptitle("PwoA: loss terms per epoch in each phase")
    return fig
