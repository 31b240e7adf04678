"""Standard AutoAttack: ours (advprune.attacks.autoattack) against the original (`pyautoattack`), side by side.

Same model, points, eps, batch size and seed. Ours runs as advprune.evaluation runs it, on the attack view
(advprune.models.view: BatchNorm folded, max pooling on the fast kernel; building it is timed); the original
gets the eval-mode model, as a user would hand it over (`--original-on view` gives it our view instead, which
isolates the attack code). Asserts identical robust accuracy, reports whether the per-point robust masks
agree, and prints both wall times and the speed ratio.

    .venv/bin/python benchmarks/autoattack.py                  # small_cnn width 32, PGD-AT on digits, whole test split
    .venv/bin/python benchmarks/autoattack.py --n 100 --model results/.../model.pt
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from advprune.attacks.autoattack import AutoAttack
from advprune.attacks.pgd import PGD
from advprune.checkpoint import load_model, save_model
from advprune.data import load_meta, load_split, prepare_dataset
from advprune.models import build_model
from advprune.models.view import AttackView
from advprune.training.losses import PGDAT
from advprune.training.trainer import TrainSettings, train


def digits_dir(work: Path) -> Path:
    out = work / "digits"
    if not (out / "meta.json").is_file():
        prepare_dataset("digits", work / "raw", out, val_fraction=0.15, split_seed=0, download=False)
    return out


def trained_model(data: Path, width: int, epochs: int, eps: float, work: Path) -> torch.nn.Module:
    """small_cnn trained with PGD-AT (the default config's pretraining attack and optimiser) for a few epochs."""
    meta = load_meta(data)
    model = build_model("small_cnn", meta["n_classes"], meta["channels"], meta["image_size"], width=width)
    torch.manual_seed(0)
    train(model, PGDAT(PGD(eps, 0.03, 5)), load_split(data, "train"), load_split(data, "val"),
          TrainSettings(epochs=epochs, batch_size=128, lr=0.05), seed=0, resume_path=work / "resume.pt", desc="pgd-at")
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="checkpoint (advprune.checkpoint.save_model format); default: train one")
    parser.add_argument("--save-model", type=Path, help="where to save the trained default model (reuse with --model)")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--n", type=int, help="first n test points (default: the whole test split)")
    parser.add_argument("--batch-size", type=int, default=512, help="the evaluation config's batch_size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--original-on", choices=["model", "view"], default="model",
                        help="what pyautoattack attacks: the eval-mode model (default) or our attack view")
    parser.add_argument("--data-dir", type=Path, help="prepared digits (default: prepared into a temporary folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="aa-bench-") as tmp:
        work = Path(tmp)
        data = args.data_dir or digits_dir(work)
        if args.model:
            model, _ = load_model(args.model)
        else:
            started = time.perf_counter()
            model = trained_model(data, args.width, args.epochs, args.eps, work)
            print(f"trained small_cnn width {args.width}, {args.epochs} epochs PGD-AT in {time.perf_counter() - started:.0f} s")
            if args.save_model:
                save_model(args.save_model, model, "small_cnn", {"width": args.width}, load_meta(data))
        test = load_split(data, "test", n=args.n)
    model.eval().requires_grad_(False)
    x, y = test.float_x(), test.y
    n_classes = int(model(x[:1]).shape[1])
    print(f"{len(y)} test points, eps {args.eps} Linf, batch size {args.batch_size}, seed {args.seed}, {args.threads} threads, "
          f"the original on the {'eval-mode model' if args.original_on == 'model' else 'attack view'}")

    started = time.perf_counter()
    view = AttackView(model).refresh()  # what advprune.evaluation attacks
    ours = AutoAttack(view, norm="Linf", eps=args.eps, n_classes=n_classes, seed=args.seed, batch_size=args.batch_size, log_progress=False)(x, y)
    ours_s = time.perf_counter() - started
    print(f"ours:         robust accuracy {ours.robust_accuracy:.4f} in {ours_s:7.1f} s  "
          + ", ".join(f"{k} {v:.1f}s" for k, v in ours.seconds.items()))

    import pyautoattack  # imported late: its import is not part of either timing

    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    started = time.perf_counter()
    attacked = view if args.original_on == "view" else model
    original = pyautoattack.AutoAttack(attacked, norm="Linf", eps=args.eps, version="standard", seed=args.seed)
    x_orig, _ = original.run_standard_evaluation(x, y, batch_size=args.batch_size)
    orig_s = time.perf_counter() - started
    with torch.no_grad():
        robust_orig = torch.cat([attacked(xb).argmax(1) == yb for xb, yb in zip(x_orig.split(args.batch_size), y.split(args.batch_size))])
    print(f"pyautoattack: robust accuracy {robust_orig.float().mean().item():.4f} in {orig_s:7.1f} s")

    same_mask = torch.equal(robust_orig, ours.robust)
    print(f"per-point robust masks identical: {same_mask} ({int((robust_orig != ours.robust).sum())} of {len(y)} differ)")
    print(f"speed ratio (pyautoattack / ours): {orig_s / ours_s:.2f}x")
    assert int(robust_orig.sum()) == int(ours.robust.sum()), "robust accuracy differs from the original"


if __name__ == "__main__":
    main()
