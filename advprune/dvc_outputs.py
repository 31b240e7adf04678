"""The small files `dvc.yaml` points at: the metrics JSON for `dvc metrics show/diff` and one CSV per plot for
`dvc plots show/diff` (DVC draws one line per file, so data that the report's figures split by method are
written one file per method). Written by the aggregate rule from the same rows as the tables."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

# Accuracy columns of the summary, each with a 95 % interval; verified_acc and hofmn_acc are empty where not computed.
ACCURACIES = ["clean_acc", "pgd_acc", "autoattack_acc", "verified_acc", "hofmn_acc"]
CURVE_COLUMNS = ["epoch", "train_loss", "train_acc", "val_clean_acc", "val_robust_acc"]


def _name(value) -> str:
    from advprune.config import fmt_sparsity  # the path form: distinct sparsities keep distinct metric names

    return fmt_sparsity(value)


def _intervals(rows: pd.DataFrame) -> dict:
    """Per accuracy present in `rows` (one row per seed): mean and 95 % interval, `<metric>`, `_lo`, `_hi`
    (t over seeds, or Wilson over one seed's points); a metric not computed for any seed is left out."""
    from advprune.stats import accuracy_interval

    out = {}
    for metric in ACCURACIES:
        if metric in rows and rows[metric].notna().any():
            ci = accuracy_interval(rows[metric], rows["n_examples"])
            out |= {metric: ci.mean, f"{metric}_lo": ci.lo, f"{metric}_hi": ci.hi}
    return out


def summary_metrics(summary: pd.DataFrame) -> dict:
    """{"<dataset>/<arch>": {"<method>@<sparsity>": {accuracies (mean over seeds) with `_lo`/`_hi` 95 % interval
    ends, sparsity_measured, n_seeds}}}."""
    metrics: dict = {}
    if summary.empty:
        return metrics
    for (dataset, arch, method, target), rows in summary.groupby(["dataset", "arch", "method", "sparsity_target"], sort=True):
        entry = {k: round(float(v), 6) for k, v in {**_intervals(rows), "sparsity_measured": rows["sparsity_measured"].mean()}.items()
                 if pd.notna(v)}
        metrics.setdefault(f"{dataset}/{arch}", {})[f"{method}@{_name(target)}"] = {**entry, "n_seeds": int(rows["seed"].nunique())}
    return metrics


def write_metrics(summary: pd.DataFrame, path: str | os.PathLike) -> None:
    from advprune.checkpoint import write_json

    write_json(summary_metrics(summary), path)


def write_plot_data(summary: pd.DataFrame, layers: pd.DataFrame, curves: pd.DataFrame, out_dir: str | os.PathLike) -> list[Path]:
    """robustness/<dataset>_<arch>_<method>.csv (accuracy vs sparsity, seeds averaged, with 95 % interval
    ends, the dense model as the point at sparsity 0), layer_sparsity/<dataset>_<arch>_<method>_s<sparsity>.csv, training/<dataset>_<arch>_seed<seed>_
    {pretrain | <method>_s<sparsity>_finetune}.csv."""
    out = Path(out_dir)
    written = []

    def write(df: pd.DataFrame, *parts: str) -> None:
        path = out.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(path, index=False)
        written.append(path)

    if not summary.empty:
        for (dataset, arch), rows in summary.groupby(["dataset", "arch"], sort=True):
            means = pd.DataFrame([{"method": method, "sparsity_target": target, "sparsity_measured": points["sparsity_measured"].mean(),
                                   **_intervals(points)} for (method, target), points in rows.groupby(["method", "sparsity_target"])])
            dense = means[means.method == "dense"]
            for method, points in means[means.method != "dense"].groupby("method"):
                write(pd.concat([dense, points]).drop(columns="method").sort_values("sparsity_target"), "robustness", f"{dataset}_{arch}_{method}.csv")
    if not layers.empty:
        for (dataset, arch, method, target), rows in layers[layers.method != "dense"].groupby(["dataset", "arch", "method", "sparsity_target"], sort=True):
            per_layer = rows.groupby(["layer_index", "layer"], as_index=False)["sparsity"].mean()
            write(per_layer, "layer_sparsity", f"{dataset}_{arch}_{method}_s{_name(target)}.csv")
    if not curves.empty:
        for keys, rows in curves.groupby(["dataset", "arch", "seed", "stage", "method", "sparsity_target"], sort=True):
            dataset, arch, seed, stage, method, target = keys
            model = "pretrain" if stage == "pretrain" else f"{method}_s{_name(target)}_{stage}"
            write(rows[[c for c in CURVE_COLUMNS if c in rows]], "training", f"{dataset}_{arch}_seed{seed}_{model}.csv")
    return written
