"""The final report: figures and tables drawn from the small tables written by `aggregate`, never from checkpoints.

This module stays free of heavy imports because the Snakefile calls :func:`expected_outputs` while building the
DAG; pandas and matplotlib are imported only when :func:`make_report` runs.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

# Figure name -> the aggregated table it is drawn from.
FIGURES = {
    "robustness_vs_sparsity": "summary",
    "layer_sparsity": "layer_sparsity",
    "sensitivity": "sensitivity",
    "training_curves": "training_curves",
}
TABLES = ("robustness",)
TABLE_FORMATS = ("csv", "md", "tex")


def expected_outputs(out_dir: str, formats=("png", "pdf")) -> list[str]:
    """Every file :func:`make_report` writes, in the order it returns them."""
    figures = [os.path.join(out_dir, "figures", f"{name}.{fmt}") for name in FIGURES for fmt in formats]
    tables = [os.path.join(out_dir, "tables", f"{name}.{ext}") for name in TABLES for ext in TABLE_FORMATS]
    return figures + tables


def make_report(tables_dir: str, out_dir: str, formats=("png", "pdf"), dpi: int = 150) -> list[str]:
    """Draw every figure in every format and write every table; returns the written paths.

    A missing or empty input table gives "no data" figures (and an empty robustness table) rather than an
    error, so the outputs Snakemake expects always exist.
    """
    import matplotlib

    from . import figures
    from .style import RC, no_data_figure, save_figure
    from .tables import read_table, robustness_table, write_table

    data = {name: read_table(tables_dir, name) for name in set(FIGURES.values())}
    written = []
    with matplotlib.rc_context(RC):
        for name, source in FIGURES.items():
            df = data[source]
            if df.empty:
                log.warning("figure %s: no rows in %s.csv; writing a 'no data' placeholder", name, source)
                fig = no_data_figure(name.replace("_", " "), f"{source}.csv has no rows")
            else:
                fig = getattr(figures, name)(df)
            written += save_figure(fig, os.path.join(out_dir, "figures", name), formats, dpi)
            log.info("figure %s: wrote %s", name, ", ".join(formats))
    written += write_table(robustness_table(data["summary"]), os.path.join(out_dir, "tables", "robustness"))
    log.info("wrote %d report files under %s", len(written), out_dir)
    return written
