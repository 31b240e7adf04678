"""Per-module robustness sensitivity of a trained model (in the spirit of RiFT's module robust criticality).

For each prunable module l with weight W_l (all other weights fixed):

    S_l = max_{||D||_2 <= rho * ||W_l||_2}  L(W_l + D; x_adv, y) - L(W_l; x_adv, y)

where L is the mean cross-entropy on a fixed set of adversarial examples x_adv, found once by PGD against the
unperturbed model. The maximum is approximated by `steps` of normalised projected gradient ascent on D
(step 2 * rho * ||W_l|| / steps, D projected back onto the ball after each step), keeping the largest loss
seen. A large S_l means robustness hinges on that module; the MRPF method allocates lower pruning ratios there.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from advprune.attacks.pgd import PGD
from advprune.models.weights import prunable_weights

log = logging.getLogger(__name__)


def module_sensitivity(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: PGD, rho: float, steps: int, include_first_last: bool = True) -> list[dict]:
    model.eval()
    x_adv, _ = attack(model, x, y)
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)  # only the perturbation needs a gradient
    try:
        return _ascend(model, x_adv, y, rho, steps, include_first_last)
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)


def _ascend(model, x_adv, y, rho, steps, include_first_last) -> list[dict]:
    def loss(replaced: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        # functional_call swaps one weight for a differentiable tensor without touching the module.
        return F.cross_entropy(torch.func.functional_call(model, replaced or {}, (x_adv,)), y)

    with torch.no_grad():
        base = float(loss())
    rows = []
    for index, (name, weight) in enumerate(prunable_weights(model, include_first_last).items()):
        radius = rho * float(weight.norm())
        delta = torch.zeros_like(weight)
        worst = base
        for _ in range(steps):
            delta.requires_grad_(True)
            (grad,) = torch.autograd.grad(loss({name: weight + delta}), delta)
            with torch.no_grad():
                delta = delta + (2 * radius / steps) * grad / grad.norm().clamp_min(1e-12)
                delta = delta * min(1.0, radius / float(delta.norm().clamp_min(1e-12)))
                worst = max(worst, float(loss({name: weight + delta})))
        rows.append({
            "module": name.removesuffix(".weight"), "module_index": index, "n_params": weight.numel(),
            "base_loss": base, "perturbed_loss": worst, "sensitivity": worst - base,
        })
        log.info("sensitivity %-28s %.4f", rows[-1]["module"], worst - base)
    return rows
