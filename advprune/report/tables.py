"""Read the aggregated tables and write the report's own tables as CSV, GitHub Markdown and LaTeX."""

from __future__ import annotations

import logging
import math
import os

import pandas as pd

from .style import sort_methods

log = logging.getLogger(__name__)

INPUT_COLUMNS = {
    "summary": [
        "dataset", "arch", "seed", "method", "sparsity_target", "sparsity_measured", "params_total",
        "params_nonzero", "flops_dense", "flops_effective", "clean_acc", "pgd_acc", "autoattack_acc",
        "n_examples", "norm", "eps",
    ],
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
}
# The accuracy columns of the summary and their display names, in table order.
METRICS = {"clean_acc": "Clean", "pgd_acc": "PGD", "autoattack_acc": "AutoAttack"}
KEYS = ["dataset", "arch", "method", "sparsity_target"]


def read_table(tables_dir: str, name: str) -> pd.DataFrame:
    """`<tables_dir>/<name>.csv`, or an empty frame with the expected columns when the file is missing or empty
    (the callers then draw a "no data" figure); a file that lacks a column is an error in `aggregate`."""
    path = os.path.join(tables_dir, f"{name}.csv")
    columns = INPUT_COLUMNS[name]
    try:
        df = pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        log.warning("%s is missing or empty; treating it as having no rows", path)
        return pd.DataFrame(columns=columns)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path} lacks columns {missing}")
    # Free-form names read back as numbers or NaN would break sorting and labels.
    for col in ("dataset", "arch", "method", "layer", "module", "stage"):
        if col in df.columns:
            df[col] = df[col].astype(str)
    return df


def robustness_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per dataset/arch/method/target sparsity: accuracies in % (mean and std over seeds),
    measured sparsity in %, nonzero parameters, and the FLOPs reduction factor relative to the dense model."""
    df = summary.assign(flops_reduction=summary["flops_dense"] / summary["flops_effective"])
    for col in METRICS:
        df[col] = 100 * df[col]
    df["sparsity_measured"] = 100 * df["sparsity_measured"]
    grouped = df.groupby(KEYS, sort=False)
    out = grouped.agg(
        n_seeds=("seed", "nunique"),
        sparsity_measured_pct=("sparsity_measured", "mean"),
        **{f"{m.removesuffix('_acc')}_pct": (m, "mean") for m in METRICS},
        # std is NaN for a single seed, which the text formats print as a plain mean.
        **{f"{m.removesuffix('_acc')}_pct_std": (m, "std") for m in METRICS},
        params_nonzero=("params_nonzero", "mean"),
        flops_reduction=("flops_reduction", "mean"),
    ).reset_index()
    out["sparsity_target_pct"] = 100 * out.pop("sparsity_target")
    order = {m: i for i, m in enumerate(sort_methods(out["method"]))}
    out = out.sort_values(["dataset", "arch", "sparsity_target_pct", "method"],
                          key=lambda s: s.map(order) if s.name == "method" else s, ignore_index=True)
    columns = ["dataset", "arch", "method", "sparsity_target_pct", "sparsity_measured_pct", "n_seeds"]
    for m in METRICS:
        columns += [f"{m.removesuffix('_acc')}_pct", f"{m.removesuffix('_acc')}_pct_std"]
    return out[columns + ["params_nonzero", "flops_reduction"]]


def _num(x: float, digits: int = 2) -> str | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _mean_std(mean: float, std: float, pm: str) -> str:
    m = _num(mean)
    if m is None:
        return "n/a"
    s = _num(std)
    return m if s is None else f"{m}{pm}{s}"


def _display(table: pd.DataFrame, pm: str, times: str) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells shared by the Markdown and LaTeX writers."""
    header = ["Dataset", "Arch", "Method", "Target sparsity (%)", "Measured sparsity (%)", "Seeds"]
    header += [f"{name} acc. (%)" for name in METRICS.values()] + ["Nonzero params", "FLOPs reduction"]
    rows = []
    for r in table.itertuples(index=False):
        cells = [r.dataset, r.arch, r.method, f"{r.sparsity_target_pct:g}", _num(r.sparsity_measured_pct) or "n/a",
                 str(r.n_seeds)]
        for m in METRICS:
            key = m.removesuffix("_acc")
            cells.append(_mean_std(getattr(r, f"{key}_pct"), getattr(r, f"{key}_pct_std"), pm))
        cells += [f"{r.params_nonzero:,.0f}", f"{_num(r.flops_reduction, 1) or 'n/a'}{times}"]
        rows.append(cells)
    return header, rows


def to_markdown(table: pd.DataFrame) -> str:
    header, rows = _display(table, " ± ", "×")
    align = ["---"] * 3 + ["---:"] * (len(header) - 3)
    lines = [header, align] + [[c.replace("|", r"\|") for c in row] for row in rows]
    return "".join("| " + " | ".join(line) + " |\n" for line in lines)


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)


def to_latex(table: pd.DataFrame) -> str:
    """A booktabs tabular (needs \\usepackage{booktabs}), with a rule between dataset/arch blocks."""
    header, rows = _display(table, "@@PM@@", "@@TIMES@@")

    def cell(text: str) -> str:
        return tex_escape(text).replace("@@PM@@", r" $\pm$ ").replace("@@TIMES@@", r"$\times$")

    lines = [r"\begin{tabular}{" + "lll" + "r" * (len(header) - 3) + "}", r"\toprule",
             " & ".join(cell(h) for h in header) + r" \\", r"\midrule"]
    previous = None
    for row in rows:
        if previous is not None and row[:2] != previous:
            lines.append(r"\midrule")
        previous = row[:2]
        lines.append(" & ".join(cell(c) for c in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_table(table: pd.DataFrame, stem: str) -> list[str]:
    """`stem.csv` (numbers, 4 decimals), `stem.md` and `stem.tex`; returns the paths."""
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    table.round(4).to_csv(f"{stem}.csv", index=False)
    for ext, render in (("md", to_markdown), ("tex", to_latex)):
        with open(f"{stem}.{ext}", "w", encoding="utf-8") as fh:
            fh.write(render(table))
    return [f"{stem}.{ext}" for ext in ("csv", "md", "tex")]

