"""What an evaluation record must hold before its numbers reach a table: every metric the evaluation always
computes, per-point results that agree with its accuracies and its point count, and the identity its path
gives it. A record that lacks a metric would read "not computed"; per-point results of another length would
silently turn a paired test into an unpaired one; results that contradict the stored accuracy give a
difference outside its own interval. Each is refused with the field that is wrong (`record_problem`).

Records of one run are also compared with each other (`mixed_problem`): every evaluation job of a run has the
same settings (provenance.config_hash) and, per dataset, the same prepared data (data_sha256); a record
with others was made by another run.
"""

from __future__ import annotations

import math
import re

# Metric name in `per_point` -> its accuracy field. The first three are always computed; verified only when
# verification ran (verified_acc null otherwise).
ALWAYS = {"clean": "clean_acc", "pgd": "pgd_acc", "autoattack": "autoattack_acc"}
OPTIONAL = {"verified": "verified_acc", "hofmn": "hofmn_acc"}
# A point an attack leaves correctly classified was correctly classified to begin with (HO-FMN: a point whose
# minimum-norm distance exceeds eps).
ROBUST = ("pgd", "autoattack", "hofmn")
REQUIRED = ("dataset", "arch", "seed", "method", "sparsity_target", "sparsity_measured", "threat_model", "n_examples", *ALWAYS.values(),
            "per_point", "points_sha256", "data_sha256", "layers", "provenance")

_RUN = r"(?P<dataset>[^/]+)/(?P<arch>[^/]+)/seed(?P<seed>\d+)"
_MODEL = r"(?P<method>[^/]+)/s(?P<sparsity_target>[0-9.]+)"
# Where the workflow writes evaluation records (workflow/rules/evaluate.smk, studies.smk): what the path says.
LAYOUTS = [re.compile(r"(?:^|/)" + pattern) for pattern in (
    rf"eval/{_RUN}/{_MODEL}\.json$",
    rf"studies/finetune/{_RUN}/{_MODEL}/(?P<finetune_mode>[^/]+)/eval\.json$",
    rf"studies/objectives/{_RUN}/(?P<pretrain_objective>[^/]+)/{_MODEL}/(?P<finetune_objective>[^/]+)/eval\.json$",
    rf"studies/objectives/{_RUN}/(?P<pretrain_objective>[^/]+)/dense\.json$",
)]


def path_identity(path: str) -> dict:
    """The record identity its path gives ({} for a path outside the workflow's layouts)."""
    for layout in LAYOUTS:
        m = layout.search(str(path).replace("\\", "/"))
        if m:
            ids = {k: v for k, v in m.groupdict().items() if v is not None}
            ids.setdefault("method", "dense")
            ids["seed"], ids["sparsity_target"] = int(ids["seed"]), float(ids.get("sparsity_target", 0))
            return ids
    return {}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def record_problem(record: dict, path: str) -> str | None:
    """What is wrong with the evaluation record read from `path`, naming the field; None when nothing is."""
    for key in REQUIRED:
        if record.get(key) is None:
            return f"{key} is missing"
    n = record["n_examples"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        return f"n_examples {n!r} is not a positive count"
    if not isinstance(record["provenance"], dict) or record["provenance"].get("config_hash") is None:
        return "provenance.config_hash is missing"
    per_point = record["per_point"]
    if not isinstance(per_point, dict):
        return f"per_point is not a map of metric to per-point results (a {type(per_point).__name__})"
    metrics = dict(ALWAYS)
    for metric, field in OPTIONAL.items():
        if record.get(field) is not None:
            metrics[metric] = field
        elif per_point.get(metric) is not None:
            return f"per_point[{metric!r}] without {field}"
    for metric, field in metrics.items():
        accuracy, bits = record[field], per_point.get(metric)
        if not _is_number(accuracy) or not 0 <= accuracy <= 1:
            return f"{field} {accuracy!r} is not an accuracy"
        if bits is None:
            return f"per_point[{metric!r}] is missing"
        if not isinstance(bits, str) or set(bits) - {"0", "1"}:
            return f"per_point[{metric!r}] is not a string of 0 and 1"
        if len(bits) != n:
            return f"per_point[{metric!r}] has {len(bits)} points, n_examples is {n}"
        # accuracies are float32 fractions: round them back to whole points
        if bits.count("1") != round(accuracy * n):
            return f"per_point[{metric!r}] has {bits.count('1')} of {n} points right, {field} {accuracy:g} says {round(accuracy * n)}"
    distances = record.get("hofmn_distances")
    if distances is not None and (not isinstance(distances, list) or len(distances) != n):
        return f"hofmn_distances has {len(distances) if isinstance(distances, list) else 'no list of'} points, n_examples is {n}"
    clean = per_point["clean"]
    for metric in ROBUST:
        if any(robust == "1" and correct == "0" for robust, correct in zip(per_point.get(metric) or "", clean)):
            return f"per_point[{metric!r}] has points counted robust that clean counts wrong"
    for key, value in path_identity(path).items():
        found = record.get(key)
        same = _is_number(found) and float(found) == value if key == "sparsity_target" else found == value
        if not same:
            return f"{key} {found!r}, the path says {value!r}"
    return None


def mixed_problem(record: dict, first: tuple[str, dict] | None, dataset_first: tuple[str, dict] | None) -> str | None:
    """What sets `record` apart from the run's first record (`first`: path, record) and its dataset's first
    (`dataset_first`); None when it belongs with them."""
    if dataset_first is not None and record["data_sha256"] != dataset_first[1]["data_sha256"]:
        other = dataset_first[1]["data_sha256"]
        return (f"made on the {record['dataset']} data {record['data_sha256'][:12]}, {dataset_first[0]} on {other[:12]}: "
                "the records come from different prepared data")
    if first is not None and record["provenance"]["config_hash"] != first[1]["provenance"]["config_hash"]:
        other = first[1]["provenance"]["config_hash"]
        return f"evaluated with the settings {record['provenance']['config_hash']}, {first[0]} with {other}: the records come from different runs"
    return None
