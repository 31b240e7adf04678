"""Collect every evaluation record, sensitivity table and training curve into the small tables the report
reads (results/tables/*.csv), so figures never need the checkpoints."""

import json
import re
from pathlib import Path

from advprune.entry import parser, write_csv
from advprune.runtime import setup_logging

SUMMARY_COLUMNS = ["dataset", "arch", "seed", "method", "sparsity_target", "sparsity_measured", "params_total", "params_nonzero",
                   "flops_dense", "flops_effective", "clean_acc", "pgd_acc", "autoattack_acc", "n_examples", "norm", "eps"]


def _read_rows(path):
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


_IDS = re.compile(r"(?P<dataset>[^/]+)/(?P<arch>[^/]+)/seed(?P<seed>\d+)(?:/(?P<method>[^/]+)/s(?P<sparsity>[0-9.]+))?/[^/]+$")


def _ids(path: str) -> dict:
    """dataset, arch, seed (and method, sparsity for pruned models) from a results path."""
    m = _IDS.search(Path(path).as_posix())
    if m is None:
        raise ValueError(f"{path}: not a results/<stage>/<dataset>/<arch>/seed<seed>/... path")
    return {"dataset": m["dataset"], "arch": m["arch"], "seed": int(m["seed"]), "method": m["method"] or "dense", "sparsity_target": float(m["sparsity"] or 0)}


def main(eval_jsons, sensitivity_csvs, pretrain_curves, finetune_curves, out, log=None):
    setup_logging(log)
    summary, layers = [], []
    for path in sorted(eval_jsons):
        record = json.loads(Path(path).read_text())
        record.update(norm=record["threat_model"]["norm"], eps=record["threat_model"]["eps"])
        summary.append({k: record[k] for k in SUMMARY_COLUMNS})
        ids = {k: record[k] for k in ("dataset", "arch", "seed", "method", "sparsity_target")}
        layers += [{**ids, **row} for row in record["layers"]]
    write_csv(summary, out["summary"])
    write_csv(layers, out["layer_sparsity"])

    sensitivity = []
    for path in sorted(sensitivity_csvs):
        ids = _ids(path)
        sensitivity += [{k: ids[k] for k in ("dataset", "arch", "seed")} | row for row in _read_rows(path)]
    write_csv(sensitivity, out["sensitivity"])

    curves = []
    for stage, paths in (("pretrain", pretrain_curves), ("finetune", finetune_curves)):
        for path in sorted(paths):
            curves += [{**_ids(path), "stage": stage, **row} for row in _read_rows(path)]
    write_csv(curves, out["training_curves"])


def cli(argv=None):
    import glob

    p = parser(__doc__)
    p.add_argument("--results", default="results", help="results directory of a finished run")
    a = p.parse_args(argv)
    r = a.results
    out = {name: f"{r}/tables/{name}.csv" for name in ("summary", "layer_sparsity", "sensitivity", "training_curves")}
    main(glob.glob(f"{r}/eval/**/*.json", recursive=True), glob.glob(f"{r}/sensitivity/**/*.csv", recursive=True),
         glob.glob(f"{r}/pretrain/**/curve.csv", recursive=True), glob.glob(f"{r}/finetune/**/curve.csv", recursive=True), out, a.log)


if __name__ == "__main__":
    if "snakemake" in globals():
        sm = snakemake  # noqa: F821
        main(sm.input.evals, sm.input.sensitivity, sm.input.pretrain_curves, sm.input.finetune_curves, dict(sm.output.items()), sm.log[0])
    else:
        cli()
