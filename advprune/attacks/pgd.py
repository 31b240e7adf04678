"""L-infinity projected gradient descent (Madry et al. 2018), the training and evaluation workhorse.

Unlike a loop around `torchattacks.PGD`, it checks no input ranges (no host syncs), projects with one fused
min/max against precomputed bounds, leaves parameter gradients untouched, and accepts any loss, so TRADES'
KL ascent shares the same loop.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ce_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # A sum, not a mean: the sign of the gradient is all PGD uses, and the sum avoids a division per step.
    return F.cross_entropy(logits, y, reduction="sum")


class PGD:
    """L-inf PGD: `steps` signed-gradient steps of size `step_size`, projected onto the eps-ball and [0, 1].

    random_start: start from a uniform point in the ball (Madry) instead of x.
    restarts: for evaluation, the worst case over this many random starts (per example).
    """

    def __init__(self, eps: float, step_size: float, steps: int, random_start: bool = True, restarts: int = 1):
        if eps <= 0 or step_size <= 0 or steps < 0 or restarts < 1:
            raise ValueError("PGD needs eps > 0, step_size > 0, steps >= 0, restarts >= 1")
        self.eps, self.step_size, self.steps = float(eps), float(step_size), int(steps)
        self.random_start, self.restarts = random_start, int(restarts)

    def perturb(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, loss: Loss = ce_sum, start: torch.Tensor | None = None) -> torch.Tensor:
        """One run of PGD maximising `loss(model(x_adv), target)`; `start` overrides the random start."""
        lower = (x - self.eps).clamp_(min=0.0)
        upper = (x + self.eps).clamp_(max=1.0)
        if start is not None:
            x_adv = torch.min(torch.max(start, lower), upper)
        elif self.random_start:
            x_adv = torch.min(torch.max(x + torch.empty_like(x).uniform_(-self.eps, self.eps), lower), upper)
        else:
            x_adv = x.clone()
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(loss(model(x_adv), target), x_adv)
            x_adv = torch.min(torch.max(x_adv.detach() + self.step_size * grad.sign(), lower), upper)
        return x_adv.detach()

    @torch.no_grad()
    def _correct(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return model(x).argmax(1) == y

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluation entry: returns (x_adv, robust) where robust = still correct after every restart.
        Points misclassified on clean inputs count as non-robust (as in AutoAttack)."""
        was_training = model.training
        model.eval()
        try:
            robust = self._correct(model, x, y)
            x_adv = x.clone()
            for _ in range(self.restarts):
                idx = robust.nonzero().flatten()
                if idx.numel() == 0:
                    break
                cand = self.perturb(model, x[idx], y[idx])
                broken = ~self._correct(model, cand, y[idx])
                x_adv[idx[broken]] = cand[broken]
                robust[idx[broken]] = False
            return x_adv, robust
        finally:
            model.train(was_training)
