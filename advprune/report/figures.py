"""The report's figures, each built from one aggregated table and returned as an unsaved Figure.

Every function expects a non-empty table (`make_report` draws a "no data" figure otherwise) and lays out one
row of panels per (dataset, arch). Curves are means over seeds; error bars and bands are one standard deviation,
drawn only where there is more than one seed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .style import (
    DENSE,
    DENSE_COLOR,
    method_color,
    method_handles,
    method_marker,
    new_figure,
    pct_label,
    sort_methods,
    sparsity_axis,
)
from .tables import METRICS

NEUTRAL = "#4d4d4d"  # for bars that belong to no method


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


def _line_band(ax: Axes, stats: pd.DataFrame, **style) -> None:
    ax.plot(stats.index, stats["mean"], **style)
    if stats["std"].notna().any():
        ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"],
                        color=style["color"], alpha=0.15, linewidth=0)


def _dense_reference(ax: Axes, mean: float, std: float) -> None:
    ax.axhline(mean, color=DENSE_COLOR, linestyle="--", linewidth=1.2, zorder=1)
    if std > 0:
        ax.axhspan(mean - std, mean + std, color=DENSE_COLOR, alpha=0.07, linewidth=0, zorder=0)


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
    fig, axes = new_figure(len(panels), len(METRICS))
    for row, ((dataset, arch), df) in enumerate(panels):
        targets = sorted(df.loc[df["method"] != DENSE, "sparsity_target"].unique())
        for col, (metric, name) in enumerate(METRICS.items()):
            ax = axes[row, col]
            for method in sort_methods(df["method"]):
                stats = _mean_std(df[df["method"] == method], "sparsity_target", metric, 100)
                if method == DENSE:
                    _dense_reference(ax, stats["mean"].iloc[0], np.nan_to_num(stats["std"].iloc[0]))
                    continue
                has_std = stats["std"].notna().any()
                ax.errorbar(100 * stats.index, stats["mean"], yerr=stats["std"].fillna(0) if has_std else None,
                            color=method_color(method), marker=method_marker(method), markersize=5,
                            capsize=3, linewidth=1.4, label=method)
            if targets:
                sparsity_axis(ax, targets)
            threat = "" if metric == "clean_acc" else f" ({_threat(df)})"
            ax.set_title(f"{dataset} / {arch}: {name}{threat}")
            ax.set_xlabel("Target sparsity (%)")
            ax.set_ylabel(f"{name} accuracy (%)")
    _legend(fig, method_handles(summary["method"]))
    fig.suptitle("Accuracy vs. sparsity (dashed: dense model; x axis ∝ −log(1 − sparsity))")
    return fig


def layer_sparsity(layers: pd.DataFrame) -> Figure:
    panels = _panels(layers)
    targets = sorted(layers["sparsity_target"].unique())
    n_layers = layers.groupby(["dataset", "arch"])["layer"].nunique().max()
    fig, axes = new_figure(len(panels), len(targets), panel_w=max(3.4, 0.16 * n_layers + 1.2), panel_h=3.4)
    for row, ((dataset, arch), df) in enumerate(panels):
        order = df.groupby("layer")["layer_index"].min().sort_values().index.tolist()
        position = {layer: i for i, layer in enumerate(order)}
        for col, target in enumerate(targets):
            ax = axes[row, col]
            title = f"{dataset} / {arch}: {pct_label(target)}% target"
            at_target = df[np.isclose(df["sparsity_target"], target)]
            if at_target.empty:
                _empty_panel(ax, title)
                continue
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
            ax.set_title(title)
            ax.set_ylabel("Layer sparsity (%)")
            _categorical_x(ax, order, "Layer (network order)")
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
