"""Official-code parity: HYDRA at 99 % and LWM's fine-tuning at 90 %, ours beside a port of the official loop.

One pretrained model (the default config's network and pretraining, trained once and reused), then for every
seed and both claims:
  - ours: the pipeline's own jobs (scripts/prune.py, scripts/finetune.py, called in-process with the params the
    Snakefile gives them) with the official method entries (PARITY_METHODS: the schemas' defaults, which are the
    official code's) and the fine-tuning section set to the official HYDRA fine-tuning loop (OFFICIAL_FINETUNE);
  - the port: benchmarks/hydra_port.py, inspire-group/hydra's train.py loop written after its code (subnet layers
    with popup scores, TRADES with the official forwards, the shifted per-epoch cosine, model_best), with the same
    epochs, learning rates, batch size, attack and threat model.
HYDRA: score training (5 epochs of the official entry) then fine-tuning; LWM: one-shot layer-wise magnitude masks
(the official baseline: fine-tuning with the scaled score init frozen), then fine-tuning. Every final model is
evaluated on the same test points (the whole test split): clean, PGD (evaluate.pgd) and standard AutoAttack.

Check: ours, the mean over seeds, lies inside the port's 95 % interval (bootstrap over the test points and the
seeds, advprune.stats.bootstrap), for AutoAttack accuracy (PGD with --no-autoattack or --quick). The paired
difference ours - port (same points, same seeds) and McNemar's test per seed are printed beside it. Exit status
1 when a check fails. Four seeds by default: at 99 % one training seed moves HYDRA's AutoAttack accuracy by up to
20 points on either side, and two seeds that happen to agree give an interval too narrow for that (seeds 0-1
alone: port 22.3 / 22.8, interval [18.5, 26.5], ours 27.0 / 29.2 outside it; seeds 2-3 then gave port 17.0 /
32.9 and ours 34.0 / 12.5).

    .venv/bin/python benchmarks/parity.py                   # 4 seeds, AutoAttack; about an hour on 2 busy cores
    .venv/bin/python benchmarks/parity.py --quick           # width 8, 2 epochs each, PGD only: tests the script, judges nothing

Last measured (commits 933a1d7-4a8c37c; the training code is the same in all of them), default network and
pretraining, HYDRA's config entry (5 score epochs), 5 fine-tuning epochs, 359 test points, standard AutoAttack (%):
    hydra@0.99  port 22.3 / 22.8 / 17.0 / 32.9  mean 23.7  interval [17.9, 30.9]
                ours 27.0 / 29.2 / 34.0 / 12.5  mean 25.7  inside; ours - port +1.9 [-13.6, +13.9]
    lwm@0.9     port 68.0 / 67.1 / 63.5 / 67.1  mean 66.4  interval [61.4, 71.3]
                ours 66.6 / 61.8 / 66.9 / 66.0  mean 65.3  inside; ours - port -1.1 [-4.8, +2.4]
LWM's masks are the port's but for 1 of 61,984 weights; HYDRA's learned masks agree on 99.3 % of the weights
(their kept sets differ as two seeds' do).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

# The official HYDRA fine-tuning loop (get_compact_net_adv_train.sh: --exp-mode finetune --lr 0.01 with configs.yml
# and the adv trainer), in the finetune section's keys; epochs, batch size and momentum stay the config's.
OFFICIAL_FINETUNE = {"objective": "trades", "trades_beta": 6.0, "lr": 0.01, "weight_decay": 1e-4, "schedule": "hydra_cosine", "batchnorm": "hydra",
                     "keep": "best_val_robust"}
CLAIMS = {"hydra": ("hydra", 0.99), "lwm": ("lwm", 0.9)}  # claim -> (prune.methods key, sparsity)
# The method entries both sides run: the official defaults (the schemas'), HYDRA with 5 score epochs as measured.
# Not the config's entries: the default config's HYDRA scores with PGD-AT for 600 steps, which the port does not follow.
PARITY_METHODS = {"hydra": {"epochs": 5}, "lwm": {}}
# --quick tests the script, not the claim: a width-8 network at 99 % is at chance, so its checks are printed, not judged.
QUICK = {"width": 8, "epochs": 2, "batch_size": 512, "attack_steps": 2, "pgd_steps": 5}


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"advprune_script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def benchmark_config(path: Path, work: Path, quick: bool) -> dict:
    from advprune.config import validate

    config = yaml.safe_load(path.read_text())
    config["data"] = {**config["data"], "root": str(work / "data"), "raw_root": str(work / "raw")}
    config["finetune"] = {**config["finetune"], **OFFICIAL_FINETUNE}
    config["prune"]["methods"] = copy.deepcopy(PARITY_METHODS)
    config["prune"]["sparsities"] = sorted({s for _, s in CLAIMS.values()})
    config["studies"] = {}
    if quick:
        arch = config["archs"][0]
        config["models"][arch] = {**config["models"].get(arch, {}), "width": QUICK["width"]}
        for section in (config["pretrain"], config["prune"]["methods"]["hydra"], config["finetune"]):
            section.update(epochs=QUICK["epochs"], batch_size=QUICK["batch_size"])
        config["pretrain"]["attack"] = {**config["pretrain"]["attack"], "steps": QUICK["attack_steps"]}
        config["evaluate"]["pgd"] = {**config["evaluate"]["pgd"], "steps": QUICK["pgd_steps"]}
    return validate(config)


def port_args(config: dict, key: str, phase: str) -> dict:
    """The port's train.py arguments for one phase, from the settings our job of the same phase runs with."""
    from advprune.config import finetune_params, prune_params

    dataset = config["datasets"][0]
    attack = {"eps": config["threat_model"]["eps"], **{k: v for k, v in config["pretrain"]["attack"].items() if k != "random_start"}}
    if phase == "prune":
        spec = prune_params(config, key, dataset=dataset)["method"]
        beta = spec["trades_beta"] if spec["trades_beta"] is not None else config["pretrain"]["trades_beta"]
        return {"epochs": spec["epochs"], "lr": spec["lr"], "momentum": spec["momentum"], "wd": spec["weight_decay"],
                "batch_size": spec["batch_size"], "beta": beta, "attack": attack}
    train = finetune_params(config, key, dataset=dataset)["train"]
    attack = {"eps": config["threat_model"]["eps"], **{k: v for k, v in train["attack"].items() if k != "random_start"}}
    return {"epochs": train["epochs"], "lr": train["lr"], "momentum": train["momentum"], "wd": train["weight_decay"],
            "batch_size": train["batch_size"], "beta": train["trades_beta"], "attack": attack}


def check_official_loop(config: dict) -> None:
    """The port implements TRADES with the official loop only: refuse a config whose settings it cannot follow."""
    from advprune.config import finetune_params, prune_params

    dataset = config["datasets"][0]
    hydra = prune_params(config, "hydra", dataset=dataset)["method"]
    train = finetune_params(config, "lwm", dataset=dataset)["train"]
    wanted = {"hydra.objective": (hydra["objective"], "trades"), "hydra.schedule": (hydra["schedule"], "hydra_cosine"),
              "hydra.batchnorm": (hydra["batchnorm"], "hydra"), "hydra.score_init": (hydra["score_init"], "scaled"),
              "hydra.freeze_bn": (hydra["freeze_bn"], False), "hydra.epoch_steps": (hydra["epoch_steps"], None),
              "finetune.objective": (train["objective"], "trades"), "finetune.epoch_steps": (train["epoch_steps"], None)}
    wrong = [f"{k} is {have!r}, the port runs {want!r}" for k, (have, want) in wanted.items() if have != want]
    if wrong:
        raise SystemExit("parity: " + "; ".join(wrong))


def evaluate(model_path: Path, test, config: dict, autoattack: bool) -> dict:
    import torch

    from advprune.attacks.pgd import PGD
    from advprune.checkpoint import load_model
    from advprune.evaluation import robustness, to_bits

    model, _ = load_model(model_path, "cpu")
    ev = config["evaluate"]
    if autoattack:
        record = robustness(model, test, 10, config["threat_model"]["eps"], "Linf", ev["pgd"], ev["autoattack"], ev["batch_size"],
                            ev["fold_batchnorm"])
        return {k: record[k] for k in ("clean_acc", "pgd_acc", "autoattack_acc", "per_point")}
    model.eval()
    x, y = test.float_x(), test.y
    torch.manual_seed(ev["autoattack"].get("seed", 0))
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    robust = PGD(config["threat_model"]["eps"], ev["pgd"]["step_size"], ev["pgd"]["steps"], restarts=ev["pgd"]["restarts"])(model, x, y)[1]
    return {"clean_acc": float(clean.float().mean()), "pgd_acc": float(robust.float().mean()),
            "per_point": {"clean": to_bits(clean), "pgd": to_bits(robust)}}


def run_ours(claim: str, seed: int, config: dict, dense: Path, work: Path, threads: int) -> Path:
    """Our prune and finetune jobs for one claim and seed (kept: a rerun in the same work dir reuses the model)."""
    from advprune.config import finetune_params, prune_params

    key, sparsity = CLAIMS[claim]
    dataset, data_dir = config["datasets"][0], str(work / "data" / config["datasets"][0])
    out = work / "ours" / claim / f"seed{seed}"
    if (out / "model.pt").exists():
        return out / "model.pt"
    out.mkdir(parents=True, exist_ok=True)
    _script("prune").main(str(dense), data_dir, sparsity, seed, prune_params(config, key, dataset=dataset), str(out / "pruned.pt"),
                          str(out / "info.json"), threads=threads, log=str(out / "prune.log"), resume_prefix=str(out / "prune"))
    _script("finetune").main(str(out / "pruned.pt"), data_dir, seed, finetune_params(config, key, dataset=dataset), str(out / "model.pt"),
                             str(out / "curve.csv"), str(out / "finetune.state.pt"), threads=threads, log=str(out / "finetune.log"))
    return out / "model.pt"


def run_port(claim: str, seed: int, config: dict, dense: Path, work: Path) -> Path:
    """The port's runs for one claim and seed: a model with our layers (weights times masks) and the masks."""
    import hydra_port
    import torch

    from advprune.checkpoint import load_model, save_model
    from advprune.data import load_meta, load_split

    key, sparsity = CLAIMS[claim]
    out = work / "port" / claim / f"seed{seed}"
    if (out / "model.pt").exists():
        return out / "model.pt"
    data_dir = work / "data" / config["datasets"][0]
    train, val = load_split(data_dir, "train"), load_split(data_dir, "val")
    data = {"train_x": train.float_x(), "train_y": train.y, "val_x": val.float_x(), "val_y": val.y}
    plain, ckpt = load_model(dense, "cpu")
    model = hydra_port.to_subnet(plain, 1 - sparsity)
    curves = {}
    if claim == "hydra":
        model, curves["prune"] = hydra_port.run(model, "prune", data, port_args(config, key, "prune"), seed, scaled_score_init=True)
        model, curves["finetune"] = hydra_port.run(model, "finetune", data, port_args(config, key, "finetune"), seed)
    else:
        model, curves["finetune"] = hydra_port.run(model, "finetune", data, port_args(config, key, "finetune"), seed, scaled_score_init=True)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(curves, out / "curves.pt")
    dense_model = hydra_port.subnet_to_dense(model, copy.deepcopy(plain))
    save_model(out / "model.pt", dense_model, ckpt["arch"], ckpt["model_options"], load_meta(data_dir), masks=hydra_port.masks(model))
    return out / "model.pt"


def evaluated(model_path: Path, test, config: dict, autoattack: bool) -> dict:
    """evaluate(), kept beside the model: a rerun in the same work dir (e.g. with more seeds) reuses it."""
    from advprune.checkpoint import write_json

    path = model_path.with_name("eval_autoattack.json" if autoattack else "eval_pgd.json")
    if not path.exists():
        write_json(evaluate(model_path, test, config, autoattack), path)
    return json.loads(path.read_text())


def sparsity(model_path: Path) -> float:
    from advprune.checkpoint import load_torch

    masks = load_torch(model_path)["masks"]
    return sum(int((~m).sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())


def mask_agreement(a: Path, b: Path) -> float:
    from advprune.checkpoint import load_torch

    ma, mb = load_torch(a)["masks"], load_torch(b)["masks"]
    same = sum(int((ma[k] == mb[k]).sum()) for k in ma)
    return same / sum(m.numel() for m in ma.values())


def judge(results: dict, metric: str) -> tuple[list[str], bool]:
    """One line per claim: per-seed accuracies, means, the port's interval, the paired difference, McNemar; and
    whether every claim's mean lies inside the port's interval."""
    from advprune.stats import Model, bootstrap, mcnemar_exact

    lines, ok = [], True
    header = (f"{'claim':<12} {'side':<5} {'per seed ' + metric + ' (%)':<26} {'mean':>6}  {'port 95 % interval':<18} {'ours - port [95 %]':<24} "
              "McNemar p per seed")
    lines.append(header)
    for claim, sides in results.items():
        models = {side: Model([r[metric] for r in rows], [len(r["bits"]) for r in rows], [r["bits"] for r in rows]) for side, rows in sides.items()}
        port = bootstrap({"port": models["port"]}, lambda acc: acc["port"].mean(axis=1))
        diff = bootstrap(models, lambda acc: acc["ours"].mean(axis=1) - acc["port"].mean(axis=1))
        mean = {side: float(np.mean(m.acc)) for side, m in models.items()}
        inside = port.lo <= mean["ours"] <= port.hi
        ok &= inside
        p_values = [mcnemar_exact(a, b).p_value for a, b in zip(models["ours"].bits, models["port"].bits)]
        label = f"{CLAIMS[claim][0]}@{CLAIMS[claim][1]:g}"
        for side in ("port", "ours"):
            seeds = " / ".join(f"{100 * a:.1f}" for a in models[side].acc)
            extra = (f"[{100 * port.lo:.1f}, {100 * port.hi:.1f}]" if side == "port" else ("inside" if inside else "OUTSIDE"))
            tail = ""
            if side == "ours":
                tail = f"{100 * diff.value:+.1f} [{100 * diff.lo:+.1f}, {100 * diff.hi:+.1f}]  " + " / ".join(f"{p:.2g}" for p in p_values)
            lines.append(f"{label:<12} {side:<5} {seeds:<26} {100 * mean[side]:>6.1f}  {extra:<18} {tail}")
    return lines, ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "config/config.yaml"), help="network, pretraining, fine-tuning epochs, evaluation")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (pruning, fine-tuning), >= 2; default 0 1 2 3 (--quick: 0 1)")
    p.add_argument("--work", default=None, help="work directory: an existing one reuses what it holds (data, the pretrained model, trained models "
                   "and their evaluations; use a new one after changing code), e.g. to add seeds (default: a new temporary one)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-autoattack", action="store_true", help="judge PGD accuracy instead of AutoAttack's")
    p.add_argument("--quick", action="store_true",
                   help=f"tests the script, judges nothing: width {QUICK['width']}, {QUICK['epochs']} epochs per phase, "
                        f"batches of {QUICK['batch_size']}, PGD only")
    a = p.parse_args(argv)
    a.seeds = a.seeds or ([0, 1] if a.quick else [0, 1, 2, 3])
    if len(a.seeds) < 2:
        p.error("--seeds: at least 2 (the intervals are over seeds and test points)")
    import torch

    torch.set_num_threads(a.threads)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="advprune-parity-"))
    work.mkdir(parents=True, exist_ok=True)
    config = benchmark_config(Path(a.config), work, a.quick)
    check_official_loop(config)
    written = yaml.safe_dump(config, sort_keys=False)
    if (work / "config.yaml").exists() and (work / "config.yaml").read_text() != written:
        raise SystemExit(f"parity: {work} holds runs of another configuration; give a new --work")
    (work / "config.yaml").write_text(written)
    autoattack = not (a.quick or a.no_autoattack)
    metric = "autoattack_acc" if autoattack else "pgd_acc"
    started = time.perf_counter()

    from advprune.config import fetch_params, pretrain_params
    from advprune.data import load_split
    from advprune.stats import from_bits

    dataset, arch = config["datasets"][0], config["archs"][0]
    data_dir = work / "data" / dataset
    if not (data_dir / "meta.json").exists():
        fetch = fetch_params(config, dataset)
        _script("fetch_data").main(dataset, fetch["raw_dir"], fetch["out_dir"], fetch["val_fraction"], fetch["split_seed"], fetch["download"])
    dense = work / "dense.pt"
    if not dense.exists():  # the default pretraining, once: every seed and both sides start from this model
        _script("pretrain").main(str(data_dir), arch, 0, pretrain_params(config, arch, dataset=dataset), str(dense), str(work / "dense.csv"),
                                 str(work / "dense.state.pt"), threads=a.threads, log=str(work / "pretrain.log"))
    test = load_split(data_dir, config["evaluate"]["split"])
    print(f"parity on {dataset}/{arch} {config['models'].get(arch, {})}, {len(test)} {config['evaluate']['split']} points, seeds {a.seeds}; "
          f"work dir {work}")
    print(f"ours: fine-tuning {({k: config['finetune'][k] for k in ('epochs', *OFFICIAL_FINETUNE)})}; hydra {config['prune']['methods']['hydra']}")

    results, notes = {}, []
    for claim in CLAIMS:
        results[claim] = {"ours": [], "port": []}
        for seed in a.seeds:
            ours_path, port_path = run_ours(claim, seed, config, dense, work, a.threads), run_port(claim, seed, config, dense, work)
            for side, path in (("ours", ours_path), ("port", port_path)):
                record = evaluated(path, test, config, autoattack)
                results[claim][side].append({**{k: v for k, v in record.items() if k != "per_point"},
                                             "bits": from_bits(record["per_point"]["autoattack" if autoattack else "pgd"])})
            convergence = json.loads((ours_path.with_name("info.json")).read_text())["convergence"]["summary"]
            notes.append(f"{claim} seed {seed}: sparsity ours {sparsity(ours_path):.4f} port {sparsity(port_path):.4f}, masks agree on "
                         f"{100 * mask_agreement(ours_path, port_path):.2f} % of weights; ours: {convergence}")
    lines, ok = judge(results, metric)
    print("\n".join(lines))
    print("\n".join(notes))
    for claim, sides in results.items():
        for side, rows in sides.items():
            print(f"{claim} {side}: clean " + " / ".join(f"{100 * r['clean_acc']:.1f}" for r in rows) + ", PGD " +
                  " / ".join(f"{100 * r['pgd_acc']:.1f}" for r in rows))
    summary = {claim: {side: [{k: v for k, v in r.items() if k != "bits"} for r in rows] for side, rows in sides.items()}
               for claim, sides in results.items()}
    (work / "parity.json").write_text(json.dumps({"metric": metric, "seeds": a.seeds, "results": summary, "ok": ok}, indent=1))
    if a.quick:
        print(f"quick: checks not judged (models at chance) ({time.perf_counter() - started:.0f} s)")
        return 0
    print(f"{'all checks passed' if ok else 'a check FAILED'} ({time.perf_counter() - started:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
