"""Shared look of every report figure: method colours and markers, the sparsity axis, saving."""

from __future__ import annotations

import hashlib
import os
import textwrap

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

DENSE = "dense"
DENSE_COLOR = "#000000"

# Colours belong to method *keys* (the job names in `prune.methods`, which label every legend and table row),
# not to implementations: two keys of one implementation (lwm and lwm_iter) are different experiments and must
# be told apart. Keys the project knows get hand-picked, mutually distinct colours (related methods in related
# hues). Any other key falls back to a hash of its name, so a key's colour depends on nothing but its own name:
# adding or removing a method never recolours the others.
KNOWN_COLORS = {
    "lwm": "#1f77b4",
    "lwm_global": "#17becf",
    "lwm_iter": "#393b79",
    "random": "#7f7f7f",
    "l1_filter": "#8c564b",
    "hydra": "#ff7f0e",
    "harp": "#d62728",
    "pwoa": "#2ca02c",
    "mrpf": "#9467bd",
}
# None of these is a known colour or close to one.
FALLBACK_COLORS = ("#e377c2", "#bcbd22", "#1b9e77", "#e6ab02", "#882255", "#44aa99", "#a6761d", "#999933")
KNOWN_MARKERS = {"lwm": "o", "lwm_global": "s", "lwm_iter": "h", "random": "x", "l1_filter": "X", "hydra": "^",
                 "harp": "v", "pwoa": "D", "mrpf": "P"}
FALLBACK_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "<", ">", "h")

RC = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.hashsalt": "advprune",  # SVG element ids are otherwise random
}

# Metadata that would otherwise embed the current time and make reruns differ byte for byte.
# (PostScript reads SOURCE_DATE_EPOCH only, so it is left to the environment.)
_METADATA = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}


def _hash_pick(name: str, options: tuple, salt: str):
    # md5, not hash(): Python salts str hashes per process, which would change colours between runs.
    digest = hashlib.md5(f"{salt}:{name}".encode()).digest()
    return options[int.from_bytes(digest[:4], "little") % len(options)]


def method_color(method: str) -> str:
    if method == DENSE:
        return DENSE_COLOR
    return category_color(method, KNOWN_COLORS)


def category_color(name: str, known: dict[str, str]) -> str:
    """`known[name]`, else a colour that depends only on the name."""
    return known.get(name) or _hash_pick(name, FALLBACK_COLORS, "color")


def method_marker(method: str) -> str:
    if method == DENSE:
        return ""
    # A different salt from the colour's, so two unknown methods that share a colour likely differ in marker.
    return KNOWN_MARKERS.get(method) or _hash_pick(method, FALLBACK_MARKERS, "marker")


def method_colors(methods) -> dict[str, str]:
    return {m: method_color(m) for m in methods}


def sort_methods(methods) -> list[str]:
    """Dense first, then alphabetical: the order of legends and tables."""
    return sorted(set(methods), key=lambda m: (m != DENSE, m))


def method_handles(methods) -> list[Line2D]:
    """Legend entries for a figure-level legend, one per method."""
    return [
        Line2D([], [], color=method_color(m), marker=method_marker(m), linestyle="--" if m == DENSE else "-", label=m)
        for m in sort_methods(methods)
    ]


def attack_point(method: str) -> dict:
    """Matplotlib style of one attack's accuracy drawn over a method's curve: an open marker in the method's colour
    (a circle for the dense model, which has no marker)."""
    return {"color": method_color(method), "marker": method_marker(method) or "o", "markerfacecolor": "white", "markeredgewidth": 1.5,
            "markersize": 7, "linestyle": "none"}


def pct_label(fraction: float) -> str:
    """0.5 -> '50', 0.99 -> '99', 0.999 -> '99.9'."""
    return f"{100 * fraction:g}"


def compression_label(sparsity: float) -> str:
    """Weights kept 1 in n: 0.9 -> '10×', 0.99 -> '100×', 0.5 -> '2×'."""
    return f"{1 / (1 - sparsity):.3g}×"


def _nines(pct):
    # -log10(1 - s): 50 % -> 0.3, 90 % -> 1, 99 % -> 2, 99.9 % -> 3, so high sparsities stay apart.
    return -np.log10(1 - np.clip(np.asarray(pct, dtype=float), -1e6, 99.9999) / 100)


def _nines_inv(y):
    return 100 * (1 - 10 ** (-np.asarray(y, dtype=float)))


def sparsity_axis(ax: Axes, targets, axis: str = "x") -> None:
    """Put target sparsities (fractions) on a -log10(1 - s) scale in %, ticked at exactly those targets."""
    pcts = sorted({100 * t for t in targets})
    set_scale = ax.set_xscale if axis == "x" else ax.set_yscale
    set_scale("function", functions=(_nines, _nines_inv))
    lo, hi = float(_nines(pcts[0])), float(_nines(pcts[-1]))
    pad = max(0.25, 0.08 * (hi - lo))
    (ax.set_xlim if axis == "x" else ax.set_ylim)(_nines_inv(lo - pad), _nines_inv(hi + pad))
    target_axis = ax.xaxis if axis == "x" else ax.yaxis
    target_axis.set_ticks(pcts, labels=[pct_label(p / 100) for p in pcts])
    target_axis.set_ticks([], minor=True)


def new_figure(nrows: int, ncols: int, panel_w: float = 3.4, panel_h: float = 2.6) -> tuple[Figure, np.ndarray]:
    """A constrained-layout figure (no pyplot: nothing global, nothing interactive) with a 2-D array of axes."""
    fig = Figure(figsize=(panel_w * ncols, panel_h * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def no_data_figure(title: str, reason: str) -> Figure:
    fig = Figure(figsize=(5, 2.5), layout="constrained")
    ax = fig.subplots()
    ax.set_axis_off()
    ax.set_title(title)
    reason = textwrap.fill(f"({reason})", 45)  # long reasons would push the text out of the figure
    ax.text(0.5, 0.5, f"no data\n{reason}", ha="center", va="center", fontsize=12, transform=ax.transAxes)
    return fig


def save_figure(fig: Figure, stem: str, formats, dpi: int) -> list[str]:
    """Write `stem.<fmt>` for every format; returns the paths."""
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    paths = []
    for fmt in formats:
        path = f"{stem}.{fmt}"
        fig.savefig(path, format=fmt, dpi=dpi, metadata=_METADATA.get(fmt))
        paths.append(path)
    return paths
