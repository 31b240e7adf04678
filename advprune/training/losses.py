"""Training objectives: natural, PGD-AT (Madry et al.), TRADES (Zhang et al.), MART (Wang et al.).

Each objective is called as `objective(model, x, y) -> (loss, logits)` with the model in train mode; the
adversarial examples are generated against the model in eval mode (BatchNorm statistics are not updated by
attack iterations, as torchattacks and HYDRA's TRADES do), through a view with BatchNorm folded into the
convolutions (advprune/attacks/fused.py). `logits` are those the loss was computed on (adversarial for
PGD-AT and MART, natural for TRADES and natural training) and feed the training accuracy.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from advprune.attacks.fused import FoldedBatchNorm
from advprune.attacks.pgd import PGD, ce_sum


class Objective:
    name = "base"
    adversarial = True
    _folded: FoldedBatchNorm | None = None

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    # Hooks of the epoch loop (advprune.training.trainer.train); objectives with state between steps
    # (a pruning method's regulariser, ADMM variables, loss-term averages) override them.
    def epoch_end(self, model: nn.Module, epoch: int) -> dict:
        """Runs after each epoch's updates; returns extra curve columns."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def _in_eval(self, model: nn.Module, attack):
        """Run `attack(view)` on the eval-mode model with BatchNorm folded into the convolutions (the same
        function, fewer kernels per attack step), then hand the model back in train mode."""
        if self._folded is None or self._folded.model is not model:
            self._folded = FoldedBatchNorm(model)
        model.eval()
        try:
            return attack(self._folded.refresh())
        finally:
            model.train()


class Natural(Objective):
    name = "natural"
    adversarial = False

    def __call__(self, model, x, y):
        logits = model(x)
        return F.cross_entropy(logits, y), logits


class PGDAT(Objective):
    """min_theta E[ max_{||d||<=eps} CE(f(x+d), y) ], inner max by PGD with a random start."""

    name = "pgd_at"

    def __init__(self, attack: PGD):
        self.attack = attack

    def __call__(self, model, x, y):
        x_adv = self._in_eval(model, lambda view: self.attack.perturb(view, x, y))
        logits = model(x_adv)
        return F.cross_entropy(logits, y), logits


class TRADES(Objective):
    """CE(f(x), y) + beta * KL(f(x) || f(x')) / B, x' maximising the KL from x + 0.001 N(0, I) (HYDRA/TRADES code)."""

    name = "trades"

    def __init__(self, attack: PGD, beta: float = 6.0):
        self.attack, self.beta = attack, float(beta)

    def __call__(self, model, x, y):
        def find_x_adv(view):
            with torch.no_grad():
                p_nat = F.softmax(view(x), dim=1)
            kl = lambda logits, target: F.kl_div(F.log_softmax(logits, dim=1), target, reduction="sum")  # noqa: E731
            return self.attack.perturb(view, x, p_nat, loss=kl, start=x + 0.001 * torch.randn_like(x))

        x_adv = self._in_eval(model, find_x_adv)
        logits = model(x)
        logits_adv = model(x_adv)
        robust = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits, dim=1), reduction="batchmean")
        return F.cross_entropy(logits, y) + self.beta * robust, logits


class MART(Objective):
    """BCE(f(x'), y) + beta * KL(f(x) || f(x')) * (1 - f(x)_y), x' by PGD on CE (Wang et al. 2020)."""

    name = "mart"

    def __init__(self, attack: PGD, beta: float = 5.0):
        self.attack, self.beta = attack, float(beta)

    def __call__(self, model, x, y):
        x_adv = self._in_eval(model, lambda view: self.attack.perturb(view, x, y, loss=ce_sum))
        logits = model(x)
        logits_adv = model(x_adv)
        p_adv = F.softmax(logits_adv, dim=1)
        top2 = torch.argsort(p_adv, dim=1)[:, -2:]
        wrong_best = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
        bce = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - p_adv + 1e-12), wrong_best)
        p_nat = F.softmax(logits, dim=1)
        true_prob = p_nat.gather(1, y.unsqueeze(1)).squeeze(1)
        kl = (F.kl_div(torch.log(p_adv + 1e-12), p_nat, reduction="none").sum(1) * (1.0000001 - true_prob)).mean()
        return bce + self.beta * kl, logits_adv


OBJECTIVES = ("natural", "pgd_at", "trades", "mart")


def build_objective(name: str, eps: float, attack: dict, trades_beta: float = 6.0, mart_beta: float = 5.0) -> Objective:
    """`attack`: {steps, step_size, random_start} of the training attack; eps from the threat model."""
    pgd = PGD(eps, attack["step_size"], attack["steps"], attack.get("random_start", True))
    if name == "natural":
        return Natural()
    if name == "pgd_at":
        return PGDAT(pgd)
    if name == "trades":
        return TRADES(pgd, trades_beta)
    if name == "mart":
        return MART(pgd, mart_beta)
    raise KeyError(f"unknown objective {name!r}; known: {', '.join(OBJECTIVES)}")
