"""How big the default network must be for the papers' effects to exist: a width sweep on the validation split.

For each width of the default architecture: pretrain with the default config's settings, prune with the
methods whose ordering the papers compare (LWM, HYDRA, HARP) at high sparsities, fine-tune as the pipeline
does, and measure clean and PGD accuracy on the *validation* split (the test split is never used to choose
anything). Prints one row per width with the parameter count and the wall time the width costs, so the
default's size is chosen from numbers: the smallest width at which the dense model is robust and the methods
are still apart at the highest sparsity.

    .venv/bin/python benchmarks/scale.py --widths 8 16 32 48
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def _run(script: str, *args: str) -> None:
    subprocess.run([sys.executable, str(REPO / "scripts" / script), *args], check=True, cwd=REPO, stdout=subprocess.DEVNULL)


def _val_accuracy(model_path: Path, data_dir: Path, config: dict) -> tuple[float, float, int]:
    import torch

    from advprune.attacks.pgd import PGD
    from advprune.checkpoint import load_model
    from advprune.data import load_split

    model, _ = load_model(model_path, "cpu")
    model.eval()
    split = load_split(data_dir, "val", "cpu")
    x, y = split.float_x(), split.y
    pgd = config["evaluate"]["pgd"]
    torch.manual_seed(0)
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    robust = PGD(config["threat_model"]["eps"], pgd["step_size"], pgd["steps"], restarts=pgd["restarts"])(model, x, y)[1].float().mean().item()
    return clean, robust, sum(p.numel() for p in model.parameters())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "config/config.yaml"), help="settings of every stage (the width is swept)")
    p.add_argument("--arch", default="small_cnn")
    p.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32, 48])
    p.add_argument("--methods", nargs="+", default=["lwm", "hydra", "harp"], help="keys of prune.methods")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.99])
    p.add_argument("--threads", default="1")
    a = p.parse_args()
    base = yaml.safe_load(Path(a.config).read_text())
    work = Path(tempfile.mkdtemp(prefix="advprune-scale-"))
    dataset = base["datasets"][0]
    raw, data = work / "raw" / dataset, work / "data" / dataset
    _run("fetch_data.py", "--dataset", dataset, "--raw-dir", str(raw), "--out-dir", str(data),
         "--val-fraction", str(base["data"]["val_fraction"]), "--split-seed", str(base["data"]["split_seed"]))
    columns = [f"{m}@{s:g}" for s in a.sparsities for m in a.methods]
    print(f"validation accuracy, clean / PGD-{base['evaluate']['pgd']['steps']} (%), {dataset}, {a.arch}; work dir {work}")
    print(f"{'width':>5} {'params':>8} {'dense':>11} " + " ".join(f"{c:>11}" for c in columns) + f" {'seconds':>8}")
    for width in a.widths:
        started = time.perf_counter()
        config = {**base, "archs": [a.arch], "models": {**base["models"], a.arch: {**base["models"].get(a.arch, {}), "width": width}},
                  "data": {**base["data"], "root": str(work / "data"), "raw_root": str(work / "raw")}}
        run = work / f"w{width}"
        run.mkdir()
        cfg = run / "config.yaml"
        cfg.write_text(yaml.safe_dump(config, sort_keys=False))
        common = ("--config", str(cfg), "--dataset", dataset, "--threads", a.threads)
        dense = run / "dense.pt"
        _run("pretrain.py", *common, "--arch", a.arch, "--out-model", str(dense), "--out-curve", str(run / "dense.csv"), "--resume", str(run / "dense.state"))
        clean, robust, n_params = _val_accuracy(dense, data, config)
        cells = []
        for sparsity in a.sparsities:
            for method in a.methods:
                pruned, tuned = run / f"{method}{sparsity}.pt", run / f"{method}{sparsity}.ft.pt"
                _run("prune.py", *common, "--model", str(dense), "--method", method, "--sparsity", str(sparsity), "--out-model", str(pruned),
                     "--out-info", str(run / f"{method}{sparsity}.json"))
                _run("finetune.py", *common, "--model", str(pruned), "--method", method, "--out-model", str(tuned),
                     "--out-curve", str(run / f"{method}{sparsity}.csv"), "--resume", str(run / f"{method}{sparsity}.state"))
                c, r, _ = _val_accuracy(tuned, data, config)
                cells.append(f"{100 * c:4.1f} / {100 * r:4.1f}")
        print(f"{width:>5} {n_params:>8} {100 * clean:4.1f} / {100 * robust:4.1f} " + " ".join(f"{c:>11}" for c in cells)
              + f" {time.perf_counter() - started:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
