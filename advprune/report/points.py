"""Per-point results (results/tables/per_point.csv) looked up for rows of the other aggregated tables, as
`advprune.stats.Model`s for the bootstrap and the paired tests."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from advprune.stats import Model, from_bits

# The columns that identify a record within an aggregated table (absent ones count as empty).
ID_COLUMNS = ("dataset", "arch", "seed", "method", "sparsity_target", "finetune_mode", "pretrain_objective", "finetune_objective")


def _key(table: str, row, metric: str) -> tuple:
    """`metric` as a summary column (autoattack_acc) or as per_point.csv names it (autoattack)."""
    metric = metric.removesuffix("_acc")
    def value(column):
        v = row.get(column) if hasattr(row, "get") else getattr(row, column, None)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if column == "seed":
            return str(int(float(v)))
        if column == "sparsity_target":
            return f"{float(v):g}"
        return str(v)
    return (table, *(value(c) for c in ID_COLUMNS), metric)


class PointIndex:
    """Per-point results by (table, record identity, metric); empty when per_point.csv has no rows."""

    def __init__(self, per_point: pd.DataFrame | None):
        self._bits: dict[tuple, np.ndarray] = {}
        self._hash: dict[tuple, str] = {}
        if per_point is None:
            return
        for row in per_point.to_dict("records"):
            key = _key(row["table"], row, row["metric"])
            self._bits[key] = from_bits(str(row["correct"]))
            self._hash[key] = "" if pd.isna(row.get("points_sha256")) else str(row["points_sha256"])

    def bits(self, table: str, row, metric: str) -> np.ndarray | None:
        return self._bits.get(_key(table, row, metric))

    def _checked(self, table: str, row: dict, metric: str) -> np.ndarray | None:
        """A row's per-point results, refused when they are not `n_examples` points with its accuracy (aggregate
        writes only such; anything else was edited, and would unpair a paired test or contradict the table)."""
        bits = self.bits(table, row, metric)
        if bits is None:
            return None
        n, accuracy = int(row["n_examples"]), float(row[metric])
        if len(bits) != n or int(bits.sum()) != round(accuracy * n):
            _, dataset, arch, seed, method, sparsity, *labels, short = _key(table, row, metric)
            where = "/".join([dataset, arch, f"seed{seed}", method, f"s{sparsity}", *filter(None, labels)])
            raise ValueError(f"per_point.csv: {table} {where} {short}: {int(bits.sum())} of {len(bits)} points right, "
                             f"{metric} {accuracy:g} of {n} points says {round(accuracy * n)} (run aggregate again)")
        return bits

    def model(self, table: str, rows: pd.DataFrame, metric: str) -> Model:
        """`rows` (one per seed, in seed order) as a Model: accuracies, point counts, per-point results where
        known. Per-point results of different points (other hashes) are dropped, so no test pairs them."""
        rows = rows.sort_values("seed")
        bits = [self._checked(table, r, metric) for r in rows.to_dict("records")]
        hashes = {self._hash.get(_key(table, r, metric)) for r in rows.to_dict("records")} - {None, ""}
        if len(hashes) > 1:
            bits = [None] * len(bits)
        return Model([float(v) for v in rows[metric]], [int(n) for n in rows["n_examples"]], bits)

    def models(self, spec: dict[str, tuple[str, pd.DataFrame]], metric: str) -> dict[str, Model]:
        """name -> (table, rows) as Models; per-point results kept only if every row of every model has them,
        all for the same points (a paired test needs exactly that), else dropped for all."""
        models = {name: self.model(table, rows, metric) for name, (table, rows) in spec.items()}
        if not self.same_points(list(spec.values()), metric):
            for m in models.values():
                m.bits = [None] * len(m.bits)
        return models

    def same_points(self, table_rows: list[tuple[str, pd.DataFrame]], metric: str) -> bool:
        """Whether every row of every (table, rows) has per-point results, all for the same points."""
        hashes, lengths = set(), set()
        for table, rows in table_rows:
            for r in rows.to_dict("records"):
                key = _key(table, r, metric)
                if key not in self._bits:
                    return False
                hashes.add(self._hash.get(key) or "")
                lengths.add(len(self._bits[key]))
        return len(lengths) == 1 and len(hashes - {""}) <= 1
