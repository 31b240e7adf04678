"""MRPF's spread rule against uniform structured pruning, on the validation split (advprune/pruning/mrpf.py, README
"MRPF's allocation rule").

One dense model pretrained with the config's pretraining (seed 0), its sensitivity table, then at each sparsity
three allocations of the same filters ranking (L1): `l1_filter` (uniform ratios), `mrpf` (sensitivity ratios
within the spread band, the default) and `mrpf_unbounded` (max_spread null, the rule before the band). Every
pruned model is fine-tuned with the config's `finetune` section, the same for all three, once per fine-tuning
seed, and evaluated on the *validation* split (clean, PGD, standard AutoAttack; the test split is never used).
Prints per sparsity and arm the measured sparsity, the channels each group keeps, the mean accuracies over the seeds
and the per-seed AutoAttack difference to l1_filter, and the wall time of each prune job.

    .venv/bin/python benchmarks/mrpf_rule.py --sparsities 0.5 0.9 0.99 --seeds 0 1
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
ARMS = {"l1_filter": {}, "mrpf": {}, "mrpf_unbounded": {"method": "mrpf", "max_spread": None}}


def _run(script: str, *args: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "scripts" / script), *args], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "config/config.yaml"), help="settings of every stage (methods and evaluation replaced)")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.9, 0.99])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="fine-tuning seeds (one pretrained model, seed 0)")
    p.add_argument("--finetune-objective", default=None, help="replaces finetune.objective for every arm (default: the config's)")
    p.add_argument("--work", default=None, help="work directory (default: a new temporary one); finished steps are reused")
    p.add_argument("--threads", default="1")
    a = p.parse_args()
    base = yaml.safe_load(Path(a.config).read_text())
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="advprune-mrpf-"))
    work.mkdir(parents=True, exist_ok=True)
    dataset, arch = base["datasets"][0], base["archs"][0]
    finetune = {**base["finetune"], **({"objective": a.finetune_objective} if a.finetune_objective else {})}
    config = {**base, "seeds": sorted({0, *a.seeds}), "studies": {}, "finetune": finetune,
              "data": {**base["data"], "root": str(work / "data"), "raw_root": str(work / "raw")},
              "prune": {**base["prune"], "sparsities": a.sparsities, "methods": ARMS},
              "evaluate": {**base["evaluate"], "split": "val", "n_examples": None, "verify": None, "latency": None}}
    cfg = work / "config.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    common = ("--config", str(cfg), "--dataset", dataset, "--threads", a.threads)
    data = work / "data" / dataset

    def once(out: Path, script: str, *args: str) -> float:
        return 0.0 if out.exists() else _run(script, *args)

    once(data / "meta.json", "fetch_data.py", "--dataset", dataset, "--raw-dir", str(work / "raw" / dataset), "--out-dir", str(data),
         "--val-fraction", str(base["data"]["val_fraction"]), "--split-seed", str(base["data"]["split_seed"]))
    dense = work / "dense.pt"
    once(dense, "pretrain.py", *common, "--arch", arch, "--seed", "0", "--out-model", str(dense), "--out-curve", str(work / "dense.csv"),
         "--resume", str(work / "dense.state"))
    sensitivity = work / "sensitivity.csv"
    once(sensitivity, "sensitivity.py", *common, "--model", str(dense), "--seed", "0", "--out", str(sensitivity))
    once(work / "dense.json", "evaluate.py", *common, "--arch", arch, "--model", str(dense), "--out", str(work / "dense.json"))
    record = json.loads((work / "dense.json").read_text())
    print(f"work dir {work}; fine-tuning {finetune['objective'] or config['pretrain']['objective']}, {finetune['epochs']} epochs; "
          f"validation split, {record['n_examples']} points")
    print(f"dense: clean {100 * record['clean_acc']:.1f}, PGD {100 * record['pgd_acc']:.1f}, AA {100 * record['autoattack_acc']:.1f}")
    print("| sparsity | arm | measured | channels kept per group | clean | PGD | AA | AA - l1_filter per seed | prune s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for sparsity in a.sparsities:
        results = {}
        for arm in ARMS:
            name = f"{arm}_s{sparsity:g}"
            pruned, pruned_info = work / f"{name}.pt", work / f"{name}.json"
            seconds = once(pruned, "prune.py", *common, "--model", str(dense), "--method", arm, "--sparsity", str(sparsity),
                           "--sensitivity", str(sensitivity), "--out-model", str(pruned), "--out-info", str(pruned_info))
            info = json.loads(pruned_info.read_text())
            # the same channels of the same dense model by the same ranking are the same network: its runs are reused
            twin = next((other for other, (o, _, _) in results.items() if o["info"]["channels"] == info["info"]["channels"]), None)
            if twin:
                results[arm] = (info, results[twin][1], seconds)
                continue
            records = []
            for seed in a.seeds:
                tuned, out = work / f"{name}_ft{seed}.pt", work / f"{name}_ft{seed}.json"
                once(tuned, "finetune.py", *common, "--model", str(pruned), "--method", arm, "--seed", str(seed),
                     "--out-model", str(tuned), "--out-curve", str(work / f"{name}_ft{seed}.csv"), "--resume", str(work / f"{name}_ft{seed}.state"))
                once(out, "evaluate.py", *common, "--arch", arch, "--model", str(tuned), "--method", arm, "--sparsity", str(sparsity),
                     "--seed", str(seed), "--out", str(out))
                records.append(json.loads(out.read_text()))
            results[arm] = (info, records, seconds)
        for arm, (info, records, seconds) in results.items():
            mean = {k: 100 * sum(r[k] for r in records) / len(records) for k in ("clean_acc", "pgd_acc", "autoattack_acc")}
            diff = ", ".join(f"{100 * (r['autoattack_acc'] - u['autoattack_acc']):+.1f}" for r, u in zip(records, results["l1_filter"][1]))
            channels = " ".join(f"{kept}/{n}" for kept, n in info["info"]["channels"].values())
            print(f"| {100 * sparsity:g} % | {arm} | {100 * info['sparsity_measured']:.1f} % | {channels} | {mean['clean_acc']:.1f} | "
                  f"{mean['pgd_acc']:.1f} | {mean['autoattack_acc']:.1f} | {diff if arm != 'l1_filter' else ''} | "
                  f"{f'{seconds:.1f}' if seconds else 'reused'} |", flush=True)

if __name__ == "__main__":
    main()
