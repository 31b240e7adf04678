"""Adversarial training step (PGD-AT), samples/s, three contenders side by side in one run:

  torchattacks  a plain loop around torchattacks.PGD (the baseline a user would write), fp32;
  fp32          advprune's training step (advprune.training.training_step) in fp32, NCHW;
  nhwc          the same step in fp32 with channels_last only;
  fast          the same step on the fast path: bf16 autocast + channels_last (advprune/training/fast.py).

Same model, same batch, same PGD settings; the contenders are timed in alternating rounds so that machine
load affects all alike. Prints samples/s and the ratios advprune fp32 / torchattacks (target >= 1.0, aim 1.25)
and fast / fp32 (the fast path's gain; expect > 1 on a GPU with bf16 tensor cores, < 1 on a CPU, where bf16
convolutions are emulated: there `fast_path: auto` stays fp32).
"""

import argparse
import copy
import time

import torch
import torch.nn.functional as F
import torchattacks

from advprune.models import build_model
from advprune.runtime import configure_torch, pick_device
from advprune.training import FastPath, build_objective, training_step


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--width", type=int, default=16, help="base width (64 = the paper's ResNet-18)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="PGD steps")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=3, help="training steps per round and contender")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    a = p.parse_args()
    configure_torch(a.threads)  # as the pipeline's jobs run: deterministic kernels, TF32 off
    device = pick_device(a.device)
    torch.manual_seed(0)
    base = build_model(a.arch, 10, 3, (a.image_size, a.image_size), width=a.width).to(device)
    x = torch.rand(a.batch_size, 3, a.image_size, a.image_size, device=device)
    y = torch.randint(0, 10, (a.batch_size,), device=device)
    eps, alpha = 8 / 255, 2 / 255
    attack = {"steps": a.steps, "step_size": alpha}

    def contender(fast: FastPath | None):
        model = fast.prepare(copy.deepcopy(base)) if fast else copy.deepcopy(base)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        model.train()
        if fast is None:
            pgd = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=a.steps, random_start=True)

            def step():
                x_adv = pgd(x, y)  # torchattacks switches the model to eval for the attack and back
                loss = F.cross_entropy(model(x_adv), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            return step
        objective = build_objective("pgd_at", eps, attack)
        return lambda: training_step(model, objective, optimizer, x, y, fast)

    fast = FastPath.resolve(device, "bf16", True)
    steps = {"torchattacks": contender(None), "fp32": contender(FastPath.resolve(device)),
             "nhwc": contender(FastPath.resolve(device, "fp32", True)), "fast": contender(fast)}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for fn in steps.values():  # warm-up (cuDNN algorithm choice, allocator)
        fn()
    seconds = dict.fromkeys(steps, 0.0)
    for _ in range(a.rounds):
        for name, fn in steps.items():
            sync()
            start = time.perf_counter()
            for _ in range(a.iters):
                fn()
            sync()
            seconds[name] += time.perf_counter() - start
    n = a.rounds * a.iters * a.batch_size
    rate = {k: n / v for k, v in seconds.items()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {a.threads} threads"
    print(f"{a.arch} width {a.width}, batch {a.batch_size}, {a.image_size}px, PGD-{a.steps} training step, {name}")
    print(f"  torchattacks  {rate['torchattacks']:9.1f} samples/s  (fp32)")
    print(f"  fp32          {rate['fp32']:9.1f} samples/s  (advprune, fp32, NCHW)")
    print(f"  nhwc          {rate['nhwc']:9.1f} samples/s  (advprune, fp32, channels_last)")
    print(f"  fast          {rate['fast']:9.1f} samples/s  (advprune, bf16, channels_last)")
    print(f"  ratio fp32/torchattacks: {rate['fp32'] / rate['torchattacks']:.3f} (target >= 1.0, aim 1.25)")
    print(f"  ratio nhwc/fp32:         {rate['nhwc'] / rate['fp32']:.3f}")
    print(f"  ratio fast/fp32:         {rate['fast'] / rate['fp32']:.3f}")


if __name__ == "__main__":
    main()
