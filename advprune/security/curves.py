"""Security curves: robust accuracy at every ε read from minimum-norm distances (a point is robust at ε when its
distance exceeds ε). Free of torch, so that the report can draw them from the aggregated tables."""

from __future__ import annotations

import numpy as np


def parse_distances(values) -> np.ndarray:
    """Distances as floats, inf where none was found: a record's list (None entries), or distances.csv's
    space-separated text ("inf" entries)."""
    if isinstance(values, str):
        values = values.split()
    d = np.array([np.inf if v is None else float(v) for v in values], dtype=float)
    return np.where(np.isnan(d), np.inf, d)


def format_distances(values) -> str:
    """The inverse of parse_distances for one table cell: shortest round-trip text, "inf" where none was found."""
    return " ".join(repr(float(v)) if v is not None and np.isfinite(v) else "inf" for v in values)


def robust_accuracy(distances, eps) -> np.ndarray:
    """Share of points whose distance exceeds each ε of `eps`."""
    d = parse_distances(distances)
    return (d[None, :] > np.atleast_1d(np.asarray(eps, dtype=float))[:, None]).mean(axis=1)
