"""Training objectives: natural, PGD-AT (Madry et al.), TRADES (Zhang et al.), MART (Wang et al.), and the
certified ones, IBP (Gowal et al.) and CROWN-IBP (Zhang et al. 2020), on the bounds of advprune.verification.

Each objective is called as `objective(model, x, y) -> (loss, logits)` with the model in train mode; the
adversarial examples are generated against the model in eval mode (BatchNorm statistics are not updated by
attack iterations, as torchattacks and HYDRA's TRADES do), through a view with BatchNorm folded into the
convolutions (advprune/models/view.py). `logits` are those the loss was computed on (adversarial for
PGD-AT and MART, natural for TRADES and natural training) and feed the training accuracy.

`hydra_clean_passes` = (before, after): the clean train-mode forwards the official HYDRA/HARP trainer makes
besides the loss's own, which the loop adds with `batchnorm: hydra` (advprune.training.trainer): one before
every adversarial objective (trainer/adv.py's `output = model(images)`), and for TRADES one after, its KL target
`softmax(model(x_natural))` being a forward of its own (utils/adv.py trades_loss).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from advprune.attacks.pgd import PGD, ce_sum
from advprune.models.view import AttackView


class Objective:
    name = "base"
    adversarial = True
    attack_steps = 0  # gradient steps of the training attack per batch: the budget a record reports as attack calls
    hydra_clean_passes = (0, 0)  # extra clean forwards (before, after) of the official trainer (module docstring)
    _folded: AttackView | None = None

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    # Hooks of the epoch loop (advprune.training.trainer.train); objectives with state between steps
    # (a pruning method's regulariser, ADMM variables, loss-term averages, an eps schedule) override them.
    def epoch_start(self, epoch: int, n_batches: int) -> None:
        """Runs before each epoch's updates (`n_batches` steps follow)."""

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
            self._folded = AttackView(model)
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
    hydra_clean_passes = (1, 0)

    def __init__(self, attack: PGD):
        self.attack, self.attack_steps = attack, attack.steps

    def __call__(self, model, x, y):
        x_adv = self._in_eval(model, lambda view: self.attack.perturb(view, x, y))
        logits = model(x_adv)
        return F.cross_entropy(logits, y), logits


class TRADES(Objective):
    """CE(f(x), y) + beta * KL(f(x) || f(x')) / B, x' maximising the KL from x + 0.001 N(0, I) (HYDRA/TRADES code)."""

    name = "trades"
    hydra_clean_passes = (1, 1)

    def __init__(self, attack: PGD, beta: float = 6.0):
        self.attack, self.beta, self.attack_steps = attack, float(beta), attack.steps

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
    hydra_clean_passes = (1, 0)

    def __init__(self, attack: PGD, beta: float = 5.0):
        self.attack, self.beta, self.attack_steps = attack, float(beta), attack.steps

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


class CertifiedTraining(Objective):
    """CROWN-IBP / IBP training as in HYDRA's trainer/crown-ibp.py: the loss is CE(-m, y), m the lower bounds of
    the margins f_y - f_j (m_y = 0) over the eps_t-ball clipped to [0, 1], with m = beta CROWN-IBP + (1 - beta) IBP.

    eps_t ramps linearly per batch from 0 to eps and beta = 1 - eps_t / eps follows it from 1 to 0 (HYDRA:
    crown_final_beta = 0; at beta = 0 only IBP is computed); `ibp` keeps beta = 0. `ramp_epochs` is HYDRA's
    schedule_length (its scripts: 120 of 200 pretraining epochs; 1 = full eps at once, for pruning and
    fine-tuning): step i of epoch t (n steps per epoch) has eps_t = eps (t n + i) / ((ramp_epochs - 1) n), full
    from the start of epoch ramp_epochs - 1, as HYDRA's EpsilonScheduler. The step count restarts with every
    epoch (epoch_start), so a resumed run follows the same schedule. `kappa` mixes in the natural
    loss, kappa CE(f(x), y) + (1 - kappa) CE(-m, y) (the CROWN-IBP paper's kappa; HYDRA: 0, the default).
    BatchNorm in train mode bounds with the clean batch's statistics. Returns the natural logits (HYDRA's
    training accuracy)."""

    def __init__(self, eps: float, name: str = "crown_ibp", ramp_epochs: int = 0, kappa: float = 0.0):
        if name not in ("ibp", "crown_ibp"):
            raise ValueError(f"certified objective must be ibp or crown_ibp, not {name!r}")
        self.name, self.eps, self.ramp_epochs, self.kappa = name, float(eps), int(ramp_epochs), float(kappa)
        self.epoch, self.step, self.steps_per_epoch = 0, 0, None
        self._bounded = None

    def eps_beta(self) -> tuple[float, float]:
        """(eps_t, beta) of the next step; without epoch_start's step count (a caller outside the epoch loop),
        eps_t moves per epoch."""
        if self.ramp_epochs > 1:
            n = self.steps_per_epoch
            progress = (self.epoch * n + self.step) / ((self.ramp_epochs - 1) * n) if n else self.epoch / (self.ramp_epochs - 1)
            eps = self.eps * min(1.0, progress)
        else:
            eps = self.eps
        return eps, (1.0 - eps / self.eps if self.name == "crown_ibp" else 0.0)

    def epoch_start(self, epoch, n_batches):
        self.epoch, self.step, self.steps_per_epoch = epoch, 0, n_batches

    def __call__(self, model, x, y):
        from advprune.verification import BoundedModel, margin_bounds

        if self._bounded is None or self._bounded.model is not model:
            self._bounded = BoundedModel(model)
        logits = model(x)
        n_classes = logits.shape[1]
        eps, beta = self.eps_beta()
        self.step += 1
        margins = margin_bounds(self._bounded, x, y, eps, "ibp", n_classes, clean=x)
        if beta > 1e-5:
            margins = beta * margin_bounds(self._bounded, x, y, eps, "crown", n_classes, clean=x) + (1 - beta) * margins
        others = torch.arange(n_classes, device=y.device).expand(len(y), -1)
        others = others[others != y[:, None]].view(len(y), n_classes - 1)
        lower = torch.zeros_like(logits).scatter(1, others, margins.to(logits.dtype))
        loss = F.cross_entropy(-lower, y)
        if self.kappa > 0:
            loss = self.kappa * F.cross_entropy(logits, y) + (1 - self.kappa) * loss
        return loss, logits

    def epoch_end(self, model, epoch):
        """Curve columns: eps_t and beta of the epoch's last step."""
        self.step -= 1
        eps, beta = self.eps_beta()
        self.epoch, self.step = epoch + 1, 0
        return {"train_eps": eps, "crown_beta": beta}

    def state_dict(self):
        return {"epoch": self.epoch}

    def load_state_dict(self, state):
        self.epoch = state["epoch"]


OBJECTIVES = ("natural", "pgd_at", "trades", "mart", "ibp", "crown_ibp")


def build_objective(name: str, eps: float, attack: dict, trades_beta: float = 6.0, mart_beta: float = 5.0, eps_ramp_epochs: int = 0,
                    kappa: float = 0.0) -> Objective:
    """`attack`: {steps, step_size, random_start} of the training attack; eps from the threat model;
    `eps_ramp_epochs`, `kappa`: the certified objectives' eps ramp and natural-loss weight."""
    if name in ("ibp", "crown_ibp"):
        return CertifiedTraining(eps, name, eps_ramp_epochs, kappa)
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
