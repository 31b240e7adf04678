"""GPU check, one command (target: at most 8 minutes on one GPU), three parts:

1. training step (PGD-10 AT) samples/s, fp32 NCHW vs bf16 autocast + channels_last (the fast path), for
   ResNet-18 width 64 and WRN-34-10, batch 128, timed in alternating rounds;
2. standard AutoAttack on 1,000 CIFAR-shaped points, with and without BatchNorm folding: the per-point results
   must be identical (a ResNet-18 width 64 with random weights and BatchNorm statistics);
3. one paper config rehearsed end to end on the GPU (advprune/rehearsal.py with device cuda).

    .venv/bin/python benchmarks/gpu_check.py                 # on the GPU machine
    .venv/bin/python benchmarks/gpu_check.py --quick         # on CPU in a few minutes: tests this script itself

--quick shrinks every part (narrow networks, batch 8, 8 points, the smallest paper config) and runs on CPU;
its numbers say nothing about GPU speed. Exits non-zero when AutoAttack's results differ or the rehearsal fails.
"""

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

from advprune.models import build_model
from advprune.runtime import configure_torch, pick_device
from advprune.training import FastPath, build_objective, training_step

REPO = Path(__file__).resolve().parent.parent
TARGET_S = 480


def train_rates(arch: str, width: int, batch: int, device: torch.device, rounds: int, iters: int) -> dict[str, float]:
    torch.manual_seed(0)
    base = build_model(arch, 10, 3, (32, 32), width=width).to(device)
    x = torch.rand(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    objective = build_objective("pgd_at", 8 / 255, {"steps": 10, "step_size": 2 / 255})
    steps = {}
    for name, fast in (("fp32", FastPath.resolve(device, "fp32", False)), ("bf16+nhwc", FastPath.resolve(device, "bf16", True))):
        model = fast.prepare(copy.deepcopy(base)).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        steps[name] = (lambda m=model, o=optimizer, f=fast: training_step(m, objective, o, x, y, f))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for step in steps.values():  # warm-up: cuDNN algorithm choice, allocator
        step()
    seconds = dict.fromkeys(steps, 0.0)
    for _ in range(rounds):
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            for _ in range(iters):
                step()
            sync()
            seconds[name] += time.perf_counter() - start
    return {name: rounds * iters * batch / s for name, s in seconds.items()}


def autoattack_folding(n: int, width: int, device: torch.device) -> tuple[bool, dict, dict]:
    from advprune.data.arrays import ArraySplit
    from advprune.evaluation import robustness

    torch.manual_seed(0)
    model = build_model("resnet18", 10, 3, (32, 32), width=width)
    for m in model.modules():  # non-trivial statistics, so that folding has something to fold
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    model = model.to(device).eval()
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():  # labels the model gets right on most points: AutoAttack then has work to do
        y = torch.cat([model(xb.to(device).float() / 255).argmax(1).cpu() for xb in x.split(250)])
    y[::4] = (y[::4] + 1) % 10
    split = ArraySplit(x, y, 255).to(device)
    pgd, aa = {"steps": 10, "restarts": 1, "step_size": 2 / 255}, {"version": "standard", "seed": 0}
    runs = {fold: robustness(copy.deepcopy(model), split, 10, 8 / 255, "Linf", pgd, aa, 500, fold_batchnorm=fold) for fold in (True, False)}
    same = runs[True]["per_point"] == runs[False]["per_point"]
    return same, runs[True], runs[False]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CPU, everything shrunk: checks that this script works, not the GPU")
    p.add_argument("--config", default=None, help="paper config to rehearse (default: ap_benchmark.yaml; --quick: pwoa_mnist.yaml)")
    p.add_argument("--device", default="auto")
    a = p.parse_args()
    started = time.perf_counter()
    configure_torch(2 if a.quick else 4)
    device = pick_device("cpu" if a.quick else a.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"gpu_check on {name}{' (--quick: shrunk, CPU)' if a.quick else ''}", flush=True)
    if device.type != "cuda" and not a.quick:
        sys.exit("gpu_check: no CUDA device (use --quick to test the script on CPU)")

    print("1. PGD-10 training step, samples/s")
    nets = [("resnet18", 4, "ResNet-18 width 4"), ("wrn_34_10", 2, "WRN-34-10 base width 2")] if a.quick else \
        [("resnet18", 64, "ResNet-18 width 64"), ("wrn_34_10", 16, "WRN-34-10")]
    batch = 8 if a.quick else 128
    for arch, width, label in nets:
        rates = train_rates(arch, width, batch, device, rounds=1 if a.quick else 3, iters=1 if a.quick else 5)
        print(f"   {label:24s} batch {batch}: fp32 {rates['fp32']:8.1f}   bf16+channels_last {rates['bf16+nhwc']:8.1f}   "
              f"ratio {rates['bf16+nhwc'] / rates['fp32']:.2f}", flush=True)

    n = 8 if a.quick else 1000
    print(f"2. standard AutoAttack on {n} CIFAR-shaped points, BatchNorm folded vs not")
    same, folded, plain = autoattack_folding(n, 2 if a.quick else 64, device)
    for label, r in (("folded", folded), ("not folded", plain)):
        print(f"   {label:10s}: clean {r['clean_acc']:.4f}  PGD {r['pgd_acc']:.4f}  AutoAttack {r['autoattack_acc']:.4f}  "
              f"({r['attack_seconds']['autoattack']:.1f} s)")
    print(f"   per-point results identical: {same}", flush=True)

    from advprune.rehearsal import RehearsalError, rehearse

    config = a.config or str(REPO / "config/paper" / ("pwoa_mnist.yaml" if a.quick else "ap_benchmark.yaml"))
    print(f"3. rehearsal of {Path(config).name} on {device}")
    with tempfile.TemporaryDirectory(prefix="advprune-gpu-check-") as tmp:
        try:
            result = rehearse(config, tmp, cores=2 if a.quick else 4, device=str(device))
            print(f"   done: {result.jobs} jobs in {result.seconds:.0f} s, report written")
            rehearsed = True
        except RehearsalError as error:
            print(f"   FAILED: {error}")
            rehearsed = False
    total = time.perf_counter() - started
    print(f"total {total:.0f} s (target {TARGET_S} s on one GPU)")
    if not (same and rehearsed):
        sys.exit(1)


if __name__ == "__main__":
    main()
