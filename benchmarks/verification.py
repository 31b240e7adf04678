"""Verified accuracy: IBP and CROWN (CROWN-IBP) examples/s, and what it adds to an evaluation.

1. Examples/s of `ibp` and `crown` (IBP intermediate bounds: what the evaluation runs) on the default model
   (small_cnn on 8x8 digits) and on ResNet-18 (CIFAR shape, 3x32x32), eval mode with BatchNorm folded as in
   the evaluation, timed in alternating rounds (median) so that machine load hits both alike; full CROWN
   (`--full-crown`) on small_cnn for comparison.
2. The cost per evaluation at the default scale: verification of the whole digits test split (359 points)
   with small_cnn, beside the PGD part of the same evaluation on the same points (the cheapest attack it
   runs; AutoAttack costs far more), and, given the default run's wall time and its number of evaluations
   (`--run-seconds`, `--evaluations`), the fraction of the run that verification adds (target <= 10 %).
   With `--digits DIR` (a prepared digits dataset), also beside a whole evaluation (clean, PGD-20, standard
   AutoAttack: advprune.evaluation.robustness) of small_cnn after a short PGD-AT on the digits train split, on
   the test split: verification <= 10 % of every evaluation keeps it <= 10 % of the run.

Weights are random except for the `--digits` comparison (the bounds' time does not depend on the weights;
AutoAttack's does, through the points still robust).
"""

import argparse
import statistics
import time

import torch

from advprune.attacks import PGD
from advprune.models import build_model
from advprune.models.view import AttackView
from advprune.runtime import configure_torch
from advprune.verification import verified_accuracy


def _view(arch, width, channels, size, seed=0):
    torch.manual_seed(seed)
    return AttackView(build_model(arch, 10, channels, (size, size), width=width).eval()).refresh()


def examples_per_second(model, x, y, eps, methods, rounds, crown_intermediate="ibp", batch_size=128):
    times = {m: [] for m in methods}
    for _ in range(rounds):
        for m in methods:
            started = time.perf_counter()
            verified_accuracy(model, x, y, eps, [m], batch_size, crown_intermediate)
            times[m].append(time.perf_counter() - started)
    return {m: len(x) / statistics.median(t) for m, t in times.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=32, help="small_cnn width (the default config's)")
    p.add_argument("--resnet-width", type=int, default=64, help="ResNet-18 base width (64 = the standard network)")
    p.add_argument("--resnet-examples", type=int, default=16)
    p.add_argument("--n-test", type=int, default=359, help="points per evaluation (the digits test split)")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--full-crown", action="store_true", help="also time full CROWN (every intermediate bound by CROWN) on small_cnn")
    p.add_argument("--run-seconds", type=float, default=None, help="wall time of the default run, to express the added cost")
    p.add_argument("--evaluations", type=int, default=None, help="evaluation jobs in the default run")
    p.add_argument("--digits", default=None, help="prepared digits dataset dir: also time a whole evaluation of a PGD-AT model")
    p.add_argument("--train-epochs", type=int, default=5)
    a = p.parse_args()
    configure_torch(a.threads)
    g = torch.Generator().manual_seed(0)

    digits_x, digits_y = torch.rand(a.n_test, 1, 8, 8, generator=g), torch.randint(0, 10, (a.n_test,), generator=g)
    small = _view("small_cnn", a.width, 1, 8)
    rate = examples_per_second(small, digits_x, digits_y, a.eps, ["ibp", "crown"], a.rounds)
    print(f"small_cnn width {a.width}, 1x8x8: IBP {rate['ibp']:.0f} examples/s, CROWN-IBP {rate['crown']:.0f} examples/s")
    if a.full_crown:
        full = examples_per_second(small, digits_x[:32], digits_y[:32], a.eps, ["crown"], 1, crown_intermediate="crown")["crown"]
        print(f"small_cnn width {a.width}, 1x8x8: full CROWN {full:.1f} examples/s")

    cifar_x = torch.rand(a.resnet_examples, 3, 32, 32, generator=g)
    cifar_y = torch.randint(0, 10, (a.resnet_examples,), generator=g)
    resnet = _view("resnet18", a.resnet_width, 3, 32)
    rate = examples_per_second(resnet, cifar_x, cifar_y, 8 / 255, ["ibp", "crown"], a.rounds, batch_size=8)
    print(f"resnet18 width {a.resnet_width}, 3x32x32: IBP {rate['ibp']:.1f} examples/s, CROWN-IBP {rate['crown']:.2f} examples/s")

    # cost per evaluation: verification of the test split vs the PGD-20 part of the same evaluation
    verify_s, pgd_s = [], []
    for _ in range(a.rounds):
        started = time.perf_counter()
        verified_accuracy(small, digits_x, digits_y, a.eps, ["ibp", "crown"], 128)
        verify_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        torch.manual_seed(0)
        for xb, yb in zip(digits_x.split(256), digits_y.split(256)):
            PGD(a.eps, 0.01, 20)(small, xb, yb)
        pgd_s.append(time.perf_counter() - started)
    v, t = statistics.median(verify_s), statistics.median(pgd_s)
    print(f"per evaluation ({a.n_test} points, small_cnn width {a.width}): verification {v:.2f} s (IBP + CROWN-IBP), "
          f"PGD-20 {t:.2f} s, ratio {v / t:.2f}")
    if a.run_seconds and a.evaluations:
        added = v * a.evaluations
        print(f"default run: {a.evaluations} evaluations add {added:.1f} s to {a.run_seconds:.0f} s = {100 * added / a.run_seconds:.1f} % "
              "(target <= 10 %)")
    if a.digits:
        whole_evaluation(a)


def whole_evaluation(a):
    from advprune.data import load_split
    from advprune.evaluation import robustness
    from advprune.training import TrainSettings, build_objective, train

    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1, (8, 8), width=a.width)
    train(model, build_objective("pgd_at", a.eps, {"steps": 5, "step_size": 0.03}), load_split(a.digits, "train"), load_split(a.digits, "val"),
          TrainSettings(epochs=a.train_epochs, batch_size=128, lr=0.05), 0, "/tmp/advprune-bench-verification.state.pt")
    test = load_split(a.digits, "test", n=a.n_test)
    started = time.perf_counter()
    scores = robustness(model, test, 10, a.eps, "Linf", {"steps": 20, "restarts": 1, "step_size": 0.01}, {"version": "standard", "seed": 0}, 256)
    attacks = time.perf_counter() - started
    started = time.perf_counter()
    result = verified_accuracy(AttackView(model).refresh(), test.float_x(), test.y, a.eps)
    verify = time.perf_counter() - started
    print(f"whole evaluation ({len(test)} test digits, PGD-AT small_cnn width {a.width}, clean {scores['clean_acc']:.3f}, "
          f"AutoAttack {scores['autoattack_acc']:.3f}, verified {float(result.either.float().mean()):.3f}): "
          f"attacks {attacks:.1f} s, verification {verify:.2f} s = {100 * verify / attacks:.1f} % of the attacks (target <= 10 %)")


if __name__ == "__main__":
    main()
