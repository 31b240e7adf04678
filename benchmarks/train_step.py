"""Adversarial training step: advprune's PGD-AT vs a plain loop around torchattacks.PGD, side by side.

Same model, same batch, same PGD settings; the two are timed in alternating rounds so that machine load
affects both alike. Prints samples/s of each and the ratio (target >= 1.0, aim 1.25).
"""

import argparse
import time

import torch
import torch.nn.functional as F
import torchattacks

from advprune.models import build_model
from advprune.runtime import pick_device
from advprune.training import build_objective


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="PGD steps")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=3, help="training steps per round and contender")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    device = pick_device(a.device)
    torch.manual_seed(0)
    model = build_model(a.arch, 10, 3, (a.image_size, a.image_size), width=a.width).to(device)
    x = torch.rand(a.batch_size, 3, a.image_size, a.image_size, device=device)
    y = torch.randint(0, 10, (a.batch_size,), device=device)
    eps, alpha = 8 / 255, 2 / 255
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    ours = build_objective("pgd_at", eps, {"steps": a.steps, "step_size": alpha})
    baseline_attack = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=a.steps, random_start=True)

    def step_ours():
        loss, _ = ours(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def step_baseline():
        x_adv = baseline_attack(x, y)  # torchattacks switches the model to eval for the attack and back
        loss = F.cross_entropy(model(x_adv), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    model.train()
    for fn in (step_ours, step_baseline):  # warm-up
        fn()
    seconds = {"advprune": 0.0, "torchattacks": 0.0}
    for _ in range(a.rounds):
        for name, fn in (("advprune", step_ours), ("torchattacks", step_baseline)):
            sync()
            start = time.perf_counter()
            for _ in range(a.iters):
                fn()
            sync()
            seconds[name] += time.perf_counter() - start
    n = a.rounds * a.iters * a.batch_size
    rate = {k: n / v for k, v in seconds.items()}
    print(f"{a.arch} width {a.width}, batch {a.batch_size}, PGD-{a.steps}, {device}, {a.threads} threads")
    for name, r in rate.items():
        print(f"  {name:13s} {r:9.1f} samples/s")
    print(f"  ratio advprune/torchattacks: {rate['advprune'] / rate['torchattacks']:.3f} (target >= 1.0, aim 1.25)")


if __name__ == "__main__":
    main()
