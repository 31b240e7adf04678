"""The final report: figures and tables drawn from the small tables written by `aggregate`, never from checkpoints.

This module stays free of heavy imports because the Snakefile calls :func:`expected_outputs` while building the
DAG; pandas and matplotlib are imported only when :func:`make_report` runs.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

# Figure name (a function of `figures`) -> the aggregated tables it is drawn from, in argument order.
FIGURES = {
    "robustness_vs_sparsity": ("summary",),
    "security_curves": ("summary", "distances"),
    "layer_sparsity": ("layer_sparsity",),
    "sensitivity": ("sensitivity",),
    "training_curves": ("training_curves",),
    "finetune_study": ("study_finetune",),
    "objective_study": ("study_objectives", "per_point"),
    "harp_layer_rates": ("layer_sparsity",),
    "mrpf_sensitivity_vs_sparsity": ("sensitivity", "layer_sparsity"),
    "pwoa_loss_terms": ("prune_curves",),
}
# Inputs that only refine what is drawn (per-point results make intervals paired): a figure is drawn without them.
OPTIONAL_INPUTS = {"per_point"}
# Report table name (built by `tables.BUILDERS` or `findings.BUILDERS`) -> the aggregated tables it is built from,
# in argument order.
TABLES = {
    "robustness": ("summary",),
    "finetune_study": ("study_finetune",),
    "objective_study": ("study_objectives", "per_point"),
    "latency": ("summary",),
    "findings": ("summary", "layer_sparsity", "study_finetune", "study_objectives", "prune_curves", "training_curves", "per_point"),
}
TABLE_FORMATS = ("csv", "md", "tex")


def expected_outputs(out_dir: str, formats=("png", "pdf")) -> list[str]:
    """Every file :func:`make_report` writes, in the order it returns them."""
    figures = [os.path.join(out_dir, "figures", f"{name}.{fmt}") for name in FIGURES for fmt in formats]
    tables = [os.path.join(out_dir, "tables", f"{name}.{ext}") for name in TABLES for ext in TABLE_FORMATS]
    return figures + tables


def make_report(tables_dir: str, out_dir: str, formats=("png", "pdf"), dpi: int = 150) -> list[str]:
    """Draw every figure in every format and write every table; returns the written paths.

    A missing or empty input table, or one without the rows a figure needs (no HARP model, say), gives a
    "no data" figure (and tables with no rows) rather than an error, so the outputs Snakemake expects always exist.
    """
    import matplotlib

    from . import figures, findings, tables
    from .style import RC, no_data_figure, save_figure
    from .tables import read_table, write_table

    builders = {**tables.BUILDERS, **findings.BUILDERS}

    sources = {s for names in (*FIGURES.values(), *TABLES.values()) for s in names}
    data = {name: read_table(tables_dir, name) for name in sorted(sources)}
    written = []
    with matplotlib.rc_context(RC):
        for name, inputs in FIGURES.items():
            try:
                empty = [s for s in inputs if data[s].empty and s not in OPTIONAL_INPUTS]
                if empty:
                    raise figures.NoData(f"no rows in {empty[0]}.csv")
                fig = getattr(figures, name)(*(data[s] for s in inputs))
            except figures.NoData as reason:
                log.warning("figure %s: %s; writing a 'no data' placeholder", name, reason)
                fig = no_data_figure(name.replace("_", " "), str(reason))
            written += save_figure(fig, os.path.join(out_dir, "figures", name), formats, dpi)
            log.info("figure %s: wrote %s", name, ", ".join(formats))
    for name, sources in TABLES.items():
        build, display = builders[name]
        table = build(*(data[s] for s in sources))
        if table.empty:
            log.warning("table %s: no rows (from %s.csv)", name, sources[0])
        written += write_table(table, os.path.join(out_dir, "tables", name), display)
    log.info("wrote %d report files under %s", len(written), out_dir)
    return written
