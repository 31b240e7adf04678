"""Collect every evaluation record, sensitivity table and training curve into the small tables the report
reads (results/tables/*.csv), and the files dvc.yaml declares (summary.json, results/plots/), so figures never
need the checkpoints.

Every accuracy comes with its 95 % Wilson interval over the record's test points (`<metric>_lo`, `<metric>_hi`);
a metric not computed (`verified_acc` when verification is off) stays empty, never 0. A record that lacks a
metric it should have, whose per-point results disagree with its accuracies or point count, whose path names
another model, or that another run made (other settings or data) stops the job with one line naming the
record and the field (advprune.records). `per_point.csv` holds
each record's per-point results (one '0'/'1' string per metric, in the split's order) and the hash of its
points, which is what paired tests between models need; `distances.csv` each record's HO-FMN minimum-norm
distances (space-separated, in the split's order, "inf" where none was found), from which the report draws the
security curves without attacking again."""

import json
import re
from pathlib import Path

import pandas as pd

from advprune.dvc_outputs import ACCURACIES, write_metrics, write_plot_data
from advprune.entry import parser, read_csv, read_json, write_csv
from advprune.records import mixed_problem, record_problem
from advprune.runtime import setup_logging
from advprune.staleness import SOURCES, record_sources
from advprune.security.curves import format_distances
from advprune.stats import wilson

SUMMARY_COLUMNS = ["dataset", "arch", "seed", "method", "impl", "sparsity_target", "sparsity_measured", "params_total", "params_nonzero",
                   "flops_dense", "flops_effective", "structured", "latency_ms", "latency_dense_ms",
                   *[c for m in ACCURACIES for c in (m, f"{m}_lo", f"{m}_hi")], "verified_ibp_acc", "verified_crown_acc", "n_examples",
                   "norm", "eps", "points_sha256"]
# What made each model (record fields `taxonomy`, `convergence`, `budget`): a comparison's arms must agree on the
# fine-tuning columns, and a verdict built on a model whose method did not run its course says so.
TAXONOMY_COLUMNS = ["structure", "locality", "allocation", "ranking", "schedule"]
FINETUNE_SETTINGS = ["objective", "epochs", "epoch_steps", "lr", "schedule", "batch_size", "weight_decay", "momentum", "attack", "trades_beta",
                     "mart_beta", "batchnorm", "keep", "eps_ramp_epochs"]
MODEL_COLUMNS = [*TAXONOMY_COLUMNS, "converged", "convergence", *(f"ft_{k}" for k in FINETUNE_SETTINGS), "ft_steps", "ft_attack_calls",
                 "ft_train_seconds", "prune_objective", "prune_epochs", "prune_steps", "prune_attack_calls", "prune_train_seconds"]
STUDY_COLUMNS = {"study_finetune": ["finetune_mode"], "study_objectives": ["pretrain_objective", "finetune_objective"]}
PER_POINT_IDS = ["table", "dataset", "arch", "seed", "method", "impl", "sparsity_target", "finetune_mode", "pretrain_objective",
                 "finetune_objective", "points_sha256"]


# What this script reads of each results file: a table or curve without it is damaged (records: advprune.records).
PRUNE_INFO_KEYS = ("method", "info")
SENSITIVITY_COLUMNS = ("module", "sensitivity")
CURVE_COLUMNS = ("epoch",)


_IDS = re.compile(r"(?P<dataset>[^/]+)/(?P<arch>[^/]+)/seed(?P<seed>\d+)(?:/(?P<method>[^/]+)/s(?P<sparsity>[0-9.]+))?/[^/]+$")


def _ids(path: str) -> dict:
    """dataset, arch, seed (and method, sparsity for pruned models) from a results path."""
    m = _IDS.search(Path(path).as_posix())
    if m is None:
        raise ValueError(f"{path}: not a results/<stage>/<dataset>/<arch>/seed<seed>/... path")
    return {"dataset": m["dataset"], "arch": m["arch"], "seed": int(m["seed"]), "method": m["method"] or "dense", "sparsity_target": float(m["sparsity"] or 0)}


def _summary_row(record: dict, extra=()) -> dict:
    record = {**record, "norm": record["threat_model"]["norm"], "eps": record["threat_model"]["eps"]}
    for metric in ACCURACIES:
        if record.get(metric) is not None:
            # accuracy * n is a count stored as a float32 fraction: round it back to whole points
            record[f"{metric}_lo"], record[f"{metric}_hi"] = wilson(round(record[metric] * record["n_examples"]), record["n_examples"])
    # Optional fields (dense models have no impl; older records no latency, per-point results or verification) stay empty.
    return {**{k: record.get(k) for k in [*SUMMARY_COLUMNS, *extra]}, **_model_columns(record), **_source_columns(record)}


def _source_columns(record: dict) -> dict:
    """Whether the model was made elsewhere (config key `external`) and where it came from."""
    external = record.get("external")
    if not external:
        return {"external": False, "source": "advprune"}
    return {"external": True, "source": f"{external['layout']}: {external.get('source') or external['path']}"}


def _model_columns(record: dict) -> dict:
    """The record's taxonomy, convergence and budget as flat columns (empty for the dense model)."""
    taxonomy, convergence = record.get("taxonomy") or {}, record.get("convergence") or {}
    budget = record.get("budget") or {}
    finetune, phases = budget.get("finetune") or {}, (budget.get("prune") or {}).values()
    settings, spent = finetune.get("settings") or {}, finetune.get("budget") or {}
    out = {k: taxonomy.get(k) for k in TAXONOMY_COLUMNS}
    out |= {"converged": convergence.get("converged"), "convergence": convergence.get("summary")}
    out |= {f"ft_{k}": json.dumps(settings[k], sort_keys=True) if isinstance(settings.get(k), dict) else settings.get(k) for k in FINETUNE_SETTINGS}
    out |= {"ft_steps": spent.get("optimizer_steps"), "ft_attack_calls": spent.get("attack_calls"), "ft_train_seconds": spent.get("train_seconds")}
    out["prune_objective"] = ",".join(sorted({p["objective"] for p in phases})) or None
    for key in ("epochs", "optimizer_steps", "attack_calls", "train_seconds"):
        out[f"prune_{key.removeprefix('optimizer_')}"] = sum(p[key] for p in phases) if phases else None
    return out


def _per_point_rows(table: str, record: dict) -> list[dict]:
    """One row per metric of a record's per-point results."""
    ids = {k: record.get(k) for k in PER_POINT_IDS} | {"table": table}
    return [{**ids, "metric": metric, "correct": bits} for metric, bits in (record.get("per_point") or {}).items() if bits is not None]


def _distance_rows(table: str, record: dict) -> list[dict]:
    """The record's HO-FMN distances as one row (none when HO-FMN did not run)."""
    if record.get("hofmn_distances") is None:
        return []
    ids = {k: record.get(k) for k in PER_POINT_IDS} | {"table": table}
    threat = record["threat_model"]
    return [{**ids, "norm": threat["norm"], "eps": threat["eps"], "distances": format_distances(record["hofmn_distances"])}]


def _provenance_row(ids: dict, prov: dict) -> dict:
    """Where one evaluation record came from, flat: code, settings, packages, machine."""
    packages = {f"{name}_version": v for name, v in prov.get("packages", {}).items()}
    return {**ids, **{k: prov.get(k) for k in ("git_sha", "git_dirty", "config_hash", "code_hash", "device", "gpu", "host", "created")}, **packages}


def _read_record(path: str, seen: dict) -> dict:
    """An evaluation record that holds what it should and belongs with the records `seen` before it (None -> the
    run's first (path, record), dataset -> that dataset's first)."""
    def check(record):
        return record_problem(record, path) or mixed_problem(record, seen.get(None), seen.get(record["dataset"]))

    record = read_json(path, check=check)
    seen.setdefault(None, (path, record))
    seen.setdefault(record["dataset"], (path, record))
    return record


def main(eval_jsons, sensitivity_csvs, pretrain_curves, finetune_curves, out, log=None, prune_infos=(), studies=None):
    """`studies`: table name (study_finetune, study_objectives) -> [{"path": evaluation record, "labels": its
    variant}] (a study reuses the main pipeline's records where its model is the main one)."""
    setup_logging(log)
    summary, layers, provenance, per_point, distances, seen = [], [], [], [], [], {}
    for path in sorted(eval_jsons):
        record = _read_record(path, seen)
        summary.append(_summary_row(record))
        per_point += _per_point_rows("summary", record)
        distances += _distance_rows("summary", record)
        ids = {k: record.get(k) for k in ("dataset", "arch", "seed", "method", "impl", "sparsity_target")}
        layers += [{**ids, **row} for row in record["layers"]]
        provenance.append(_provenance_row(ids, record["provenance"]))
    write_csv(summary, out["summary"])
    write_csv(layers, out["layer_sparsity"])
    write_csv(provenance, out["provenance"])

    for name, extra in STUDY_COLUMNS.items():
        records = [{**_read_record(r["path"], seen), **r["labels"]} for r in (studies or {}).get(name, [])]
        write_csv([_summary_row(record, extra) for record in records], out[name], header=[*SUMMARY_COLUMNS, *extra, *MODEL_COLUMNS])
        per_point += [row for record in records for row in _per_point_rows(name, record)]
        distances += [row for record in records for row in _distance_rows(name, record)]
    write_csv(per_point, out["per_point"], header=[*PER_POINT_IDS, "metric", "correct"])
    write_csv(distances, out["distances"], header=[*PER_POINT_IDS, "norm", "eps", "distances"])

    prune_curves = []
    for path in sorted(prune_infos):
        info = read_json(path, PRUNE_INFO_KEYS)
        ids = {**_ids(path), "impl": info["method"]["method"]}
        for phase, rows in info["info"].get("curves", {}).items():
            prune_curves += [{**ids, "phase": phase, **row} for row in rows]
    write_csv(prune_curves, out["prune_curves"], header=["dataset", "arch", "seed", "method", "sparsity_target", "impl", "phase", "epoch"])

    sensitivity = []
    for path in sorted(sensitivity_csvs):
        ids = _ids(path)
        rows = read_csv(path, SENSITIVITY_COLUMNS, numbers=("sensitivity",))
        sensitivity += [{k: ids[k] for k in ("dataset", "arch", "seed")} | row for row in rows]
    write_csv(sensitivity, out["sensitivity"])

    curves = []
    for stage, paths in (("pretrain", pretrain_curves), ("finetune", finetune_curves)):
        for path in sorted(paths):
            curves += [{**_ids(path), "stage": stage, **row} for row in read_csv(path, CURVE_COLUMNS, numbers=CURVE_COLUMNS)]
    write_csv(curves, out["training_curves"])

    # What dvc.yaml declares: the metrics JSON and one CSV per DVC plot.
    frames = [pd.DataFrame(rows) for rows in (summary, layers, curves)]
    write_metrics(frames[0], out["metrics"])
    write_plot_data(*frames, out["plots"])
    study_paths = [r["path"] for records in (studies or {}).values() for r in records]
    record_sources([*eval_jsons, *study_paths, *sensitivity_csvs, *pretrain_curves, *finetune_curves, *prune_infos], out["sources"])


def outputs(results: str) -> dict:
    """Where `main` writes, under a results directory (as workflow/rules/report.smk declares it)."""
    tables = ("summary", "layer_sparsity", "sensitivity", "training_curves", "prune_curves", "per_point", "distances", "provenance", *STUDY_COLUMNS)
    return {**{name: f"{results}/tables/{name}.csv" for name in tables}, "metrics": f"{results}/tables/summary.json", "plots": f"{results}/plots",
            "sources": f"{results}/tables/{SOURCES}"}


def cli(argv=None):
    import glob

    p = parser(__doc__)
    p.add_argument("--results", default="results", help="results directory of a finished run")
    a = p.parse_args(argv)
    r = a.results
    out = outputs(r)
    # Without the workflow only the studies' own records are known (the records they share with the main grid are not).
    studies = {"study_finetune": [{"path": p, "labels": {}} for p in glob.glob(f"{r}/studies/finetune/**/eval.json", recursive=True)],
               "study_objectives": [{"path": p, "labels": {}} for p in [*glob.glob(f"{r}/studies/objectives/**/eval.json", recursive=True),
                                                                        *glob.glob(f"{r}/studies/objectives/*/*/seed*/*/dense.json")]]}
    main(glob.glob(f"{r}/eval/**/*.json", recursive=True), glob.glob(f"{r}/sensitivity/**/*.csv", recursive=True),
         glob.glob(f"{r}/pretrain/**/curve.csv", recursive=True), glob.glob(f"{r}/finetune/**/curve.csv", recursive=True), out, a.log,
         glob.glob(f"{r}/prune/**/info.json", recursive=True), studies)


if __name__ == "__main__":
    if "snakemake" in globals():
        sm = snakemake  # noqa: F821
        main(sm.input.evals, sm.input.sensitivity, sm.input.pretrain_curves, sm.input.finetune_curves, dict(sm.output.items()), sm.log[0],
             sm.input.prune_infos, sm.params.studies)
    else:
        cli()
