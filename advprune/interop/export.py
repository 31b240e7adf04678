"""`advprune export`: for every pruned model of a finished run, what a submission to the Adversarial Pruning
benchmark and to RobustBench needs, under `results/export/<dataset>/<arch>/seed<seed>/<method>/s<sparsity>/`:

- `benchmark.pt`: `{'state_dict': ...}`, loadable with `strict=True` into the benchmark's base model (masks
  folded, a structured model at the dense shapes, advprune.interop.benchmark);
- `benchmark.json`: its model key, the taxonomy entry and the per-model fields of the submission (clean,
  AutoAttack, HO-FMN accuracy in percent, normalisation flag), filled from the evaluation record, and where the
  checkpoint or the evaluation differs from the benchmark's (`checkpoint_issues`, `protocol_issues`);
- `distances.pickle`: the per-point L-inf distances HO-FMN found (a list of floats, inf where none was found;
  what the benchmark's security-curve plot reads), when the record has them;
- `model_info.json`: RobustBench's leaderboard entry, with `issues` beside it in benchmark.json.

and, for the whole run, `index.json` (one row per model), `taxonomy.json` (one entry per method, as in the
benchmark's taxonomy/taxonomy.json) and `SUBMISSION.md` (the benchmark's "New AP method" issue and the RobustBench
entries, filled in). A model whose architecture has no base model in the benchmark gets everything but the
checkpoint, and one line saying so.

Run from the repository root after a complete run: `advprune export` (the run's Snakemake options after `--`,
e.g. `-- --configfile config/paper/ap_benchmark.yaml`; default: those `advprune publish` recorded). The
workflow's `export` rule (config key `export.enabled`) runs the same function.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
from pathlib import Path

from advprune.interop import benchmark, robustbench
from advprune.interop.naming import NamingError
from advprune.interop.papers import paper_of

log = logging.getLogger(__name__)


def _write_pickle(obj, path: Path) -> None:
    from advprune.checkpoint import atomic_write

    def write(tmp):
        with open(tmp, "wb") as fh:
            pickle.dump(obj, fh)

    atomic_write(path, write)


def export_model(item: dict, out_dir: Path, pretraining: str, ap_keys: dict) -> dict:
    """Export one model (`item`: its ids, evaluation record and checkpoint paths); returns its index row."""
    from advprune.checkpoint import load_model, save_torch, write_json
    from advprune.entry import read_json

    record = read_json(item["record"], ("dataset", "sparsity_target", "threat_model", "n_examples", "clean_acc", "autoattack_acc", "taxonomy"))
    model, ckpt = load_model(item["model"])
    impl = record.get("impl") or item["method"]
    paper = paper_of(impl, ap_keys.get(item["method"]))
    structure = record["taxonomy"]["structure"]
    sparsity = record["sparsity_target"]
    key = benchmark.model_key(paper, ckpt["arch"], record["dataset"], structure, sparsity)
    out_dir.mkdir(parents=True, exist_ok=True)
    refused = None
    try:
        save_torch(benchmark.checkpoint(model, ckpt), out_dir / "benchmark.pt")
    except NamingError as error:
        refused = str(error)
        log.warning("%s: no benchmark checkpoint: %s", item["model"], refused)
    distances = record.get("hofmn_distances")
    if distances:
        _write_pickle([math.inf if d is None else float(d) for d in distances], out_dir / "distances.pickle")
    rb_name = robustbench.model_name(paper, ckpt["arch"], structure, sparsity)
    files = {"checkpoint": None if refused else "benchmark.pt", "distances": "distances.pickle" if distances else None,
             "model_info": "model_info.json"}
    entry = {
        "benchmark": {"repo": benchmark.REPO, "commit": benchmark.COMMIT},
        "model_key": key,
        "base_model": benchmark.BASE_MODELS.get(ckpt["arch"]),
        "refused": refused,
        "files": files,
        "taxonomy": benchmark.taxonomy_entry(paper, record, pretraining),
        "in_benchmark_taxonomy": paper.in_taxonomy,
        "results": benchmark.submission_fields(record),
        "checkpoint_issues": benchmark.checkpoint_issues(ckpt, record["dataset"], structure, sparsity),
        "protocol_issues": benchmark.protocol_issues(record),
        "robustbench": {"name": rb_name, "dataset": record["dataset"], "threat_model": record["threat_model"]["norm"],
                        "issues": robustbench.issues(record)},
        "record": {"path": str(item["record"]), "points_sha256": record.get("points_sha256"), "eps": record["threat_model"]["eps"],
                   "n_examples": record["n_examples"], "git_sha": (record.get("provenance") or {}).get("git_sha")},
    }
    write_json(robustbench.model_info(paper, record, impl, ckpt["model_options"].get("width")), out_dir / "model_info.json")
    write_json(entry, out_dir / "benchmark.json")
    ids = {k: item[k] for k in ("dataset", "arch", "seed", "method", "sparsity")}
    return {**ids, "impl": impl, "dir": str(out_dir), **{k: entry[k] for k in ("model_key", "refused", "files", "results", "checkpoint_issues",
                                                                               "protocol_issues", "robustbench", "taxonomy")}}


def export_run(items: list[dict], out_root, settings: dict) -> list[dict]:
    """Export every model of `items` under `out_root` and write the run's index, taxonomy and SUBMISSION.md;
    `settings`: advprune.config.export_params (how each (dataset, arch) was pretrained, the AP keys the config
    gives). Returns the index rows."""
    from advprune.checkpoint import atomic_write, write_json

    out_root = Path(out_root)
    rows = []
    for item in items:
        out_dir = out_root / item["dataset"] / item["arch"] / f"seed{item['seed']}" / item["method"] / f"s{item['sparsity']}"
        pretraining = benchmark.pretraining_text(settings["pretrain"][f"{item['dataset']}/{item['arch']}"])
        rows.append(export_model(item, out_dir, pretraining, settings["ap_keys"]))
    keys = [row["model_key"] for row in rows if row["model_key"]]
    for row in rows:
        row["duplicate_key"] = keys.count(row["model_key"]) > 1  # the benchmark takes one checkpoint per key
    write_json({"benchmark": {"repo": benchmark.REPO, "commit": benchmark.COMMIT}, "models": rows}, out_root / "index.json")
    entries = list({json.dumps(row["taxonomy"], sort_keys=True): row["taxonomy"] for row in rows}.values())
    write_json(entries, out_root / "taxonomy.json")
    text = submission_text(rows)
    atomic_write(out_root / "SUBMISSION.md", lambda tmp: Path(tmp).write_text(text))
    return rows


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def submission_text(rows: list[dict]) -> str:
    """The benchmark's "New AP method" issue per taxonomy entry, and the RobustBench entries, filled in."""
    lines = [f"# Submissions from this run (Adversarial Pruning benchmark at {benchmark.REPO}@{benchmark.COMMIT[:7]}; RobustBench)", "",
             "Upload each checkpoint and distances file to Google Drive and put its id where the template says `your_gdrive_link_id`.", ""]
    by_entry: dict[str, list[dict]] = {}
    for row in rows:
        by_entry.setdefault(json.dumps(row["taxonomy"], sort_keys=True), []).append(row)
    for group in by_entry.values():
        entry = group[0]["taxonomy"]  # in the order of the benchmark's taxonomy.json
        lines += [f"## {entry['ap_key']}", "", "### JSON Entry", "", "```json", json.dumps(entry, indent=2), "```", ""]
        for n, row in enumerate(group, 1):
            results = row["results"]
            lines += [f"### Evaluation Results of Model n°{n}: `{row['model_key']}` ({row['dir']})", ""]
            if row["refused"]:
                lines += [f"Not submittable: {row['refused']}", ""]
                continue
            lines += [f'_Model GDrive:_ "{row["model_key"]}" : ["your_gdrive_link_id", ".pt"]  ({row["dir"]}/benchmark.pt)']
            if row["files"]["distances"]:
                lines.append(f'_Distances GDrive:_ "{row["model_key"]}" : ["your_gdrive_link_id", ".pickle"]  ({row["dir"]}/distances.pickle)')
            lines += ["", f"_Clean Accuracy:_ {_number(results['clean_acc'])}", f"_Robust Accuracy (AA):_ {_number(results['autoattack_acc'])}",
                      f"_Robust Accuracy (HO-FMN):_ {_number(results['hofmn_acc'])}", "", "Normalization: none (inputs in [0, 1])."]
            issues = row["checkpoint_issues"] + row["protocol_issues"]
            if row["duplicate_key"]:
                issues.append("other models of this run have the same key (other seeds, or method keys of one implementation): submit one")
            if issues:
                lines += ["", "Differs from the benchmark: " + "; ".join(issues) + "."]
            lines.append("")
    lines += ["## RobustBench", "", "Each `model_info.json` goes to `model_info/<dataset>/Linf/<name>.json` of RobustBench/robustbench "
              "(\"New Model(s)\" issue; the model itself as a Model Zoo entry, see their README).", ""]
    for row in rows:
        rb = row["robustbench"]
        issues = "; ".join(rb["issues"]) or "none"
        lines.append(f"- `{rb['name']}` ({rb['dataset']}): {row['dir']}/model_info.json; differs from the leaderboard's protocol: {issues}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    import argparse
    import sys

    from advprune import config as cfg
    from advprune.checkpoint import CheckpointError
    from advprune.runtime import setup_logging

    p = argparse.ArgumentParser(prog="advprune export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/export", help="directory to write (default: results/export)")
    p.add_argument("--log", default=None, help="also write the log to this file")
    p.add_argument("snakemake_args", nargs="*", help="the run's Snakemake options, after --, e.g. -- --configfile config/paper/x.yaml")
    a = p.parse_args(argv)
    if not Path("Snakefile").exists():
        sys.exit("advprune export: run this from the repository root (where the Snakefile is)")
    setup_logging(a.log)
    from advprune.versioning import _configfile, recorded_args

    try:
        config = cfg.load_config(_configfile(a.snakemake_args or recorded_args()))
        items = cfg.export_items(config)
        missing = [path for item in items for path in (item["record"], item["model"]) if not Path(path).is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            sys.exit(f"advprune export: the run is not complete: {missing[0]} is missing{more}; finish it with snakemake first")
        rows = export_run(items, a.out, cfg.export_params(config))
    except (cfg.ConfigError, CheckpointError) as error:
        sys.exit(f"advprune export: {error}")
    for row in rows:
        if row["refused"]:
            print(f"advprune export: {row['dir']}: no benchmark checkpoint: {row['refused']}")
    print(f"advprune export: {len(rows)} models ({sum(not r['refused'] for r in rows)} benchmark checkpoints) in {a.out}; "
          f"see {a.out}/SUBMISSION.md")
