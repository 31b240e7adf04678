"""Minimum-norm L∞ distances per point with FMN (Pintor et al. 2021, "Fast Minimum-norm Adversarial Attacks
through Adaptive Norm Constraints"), run by secml-torch's native implementation (`secmlt.adv.evasion.fmn`,
pinned in constraints.txt) in the configuration the Adversarial Pruning benchmark evaluates with: HO-FMN's
(Mura et al. 2024, pralab/HO-FMN) DLR loss, SGD and cosine-annealed step size.

What we hand secml-torch's FMN, and what differs from it and from HO-FMN's own FMN (src/attacks/fmn.py):
- Loss: the DLR loss of Croce & Hein 2020, maximised (HO-FMN's `DLR`); secml-torch ships only the logit
  difference, so `DLRLoss` is ours.
- Optimizer: SGD with the tuned lr, momentum, weight decay and dampening, on the sign of the gradient (HO-FMN's
  L∞ step; secml-torch's FMN steps along the L2-normalised gradient, as the FMN paper does). The step size is
  cosine-annealed to 0 over the steps (HO-FMN's CALR, eta_min 0; secml-torch's default ends at lr/100).
- Everything else is secml-torch's FMN: zero start, ε decayed by γ (0.05 → 0.001, cosine) while adversarial and
  grown by γ once an adversarial example was found, the smallest adversarial perturbation kept. Two details
  differ from HO-FMN's loop and are left as secml-torch has them: γ follows its cosine one step later, and ε is
  not clipped to the largest distance the [0, 1] box allows.
- Distances: every returned point is checked with one forward pass. A point whose returned example is not
  misclassified (FMN found none in its steps) gets distance inf: robust at every ε. HO-FMN returns the clean
  point for it, distance 0, which the benchmark's robust accuracy counts as broken. A misclassified clean point
  has distance 0.
- Device: secml-torch 1.5 keeps FMN's bookkeeping on the CPU (its min-distance loop fails with a model on a GPU,
  pralab/secml-torch#198), so the points and perturbations stay on the host and only the model calls run on the
  model's device, their scores brought back. The model's parameters are frozen while it runs (secml-torch
  back-propagates with .backward(), which would otherwise compute weight gradients at every step).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass

import torch
import torch.nn as nn
from secmlt.adv.evasion.fmn import FMNNative
from secmlt.adv.evasion.perturbation_models import LpPerturbationModels
from secmlt.models.pytorch.base_pytorch_nn import BasePyTorchClassifier
from secmlt.optimization.gradient_processing import LinearProjectionGradientProcessing

log = logging.getLogger(__name__)


class DLRLoss(nn.Module):
    """Per-point difference-of-logits ratio, -(z_y - max_{j≠y} z_j) / (z_π1 - z_π3 + 1e-12) (π: logits in
    descending order), which an untargeted attack maximises; needs 3 classes or more."""

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        top = logits.sort(dim=1, descending=True).values
        true = logits.gather(1, y[:, None])[:, 0]
        others = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
        return -(true - others) / (top[:, 0] - top[:, 2] + 1e-12)


@dataclass(frozen=True)
class FMNParams:
    """HO-FMN's tuned quantities: SGD's settings (torch.optim.SGD's meaning)."""

    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    dampening: float = 0.0


class _HOFMN(FMNNative):
    """secml-torch's native FMN with HO-FMN's loss, optimizer, L∞ step and schedule end."""

    def __init__(self, steps: int, params: FMNParams):
        super().__init__(LpPerturbationModels.LINF, num_steps=steps, max_step_size=params.lr, min_step_size=0.0)
        self.loss_function = DLRLoss()
        self.optimizer_cls = functools.partial(torch.optim.SGD, momentum=params.momentum, weight_decay=params.weight_decay,
                                               dampening=params.dampening)
        self.gradient_processing = LinearProjectionGradientProcessing(LpPerturbationModels.LINF)


def _on_host(scores: torch.Tensor) -> torch.Tensor:
    return scores.cpu()


@contextlib.contextmanager
def _frozen(model: nn.Module):
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in grads:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in grads:
            p.requires_grad_(flag)


def fmn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, params: FMNParams, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances, adversarial points) of `x`, `y` under the eval-mode `model`, in the points' order, on the host:
    the L∞ norm of each confirmed adversarial perturbation, 0 for a misclassified point, inf where FMN found none.
    Deterministic: FMN starts from zero and draws nothing."""
    device = next(model.parameters()).device
    wrapped = BasePyTorchClassifier(model, postprocessing=_on_host)
    x, y = x.detach().cpu(), y.detach().cpu()
    adversarial = []
    with _frozen(model):
        for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
            # a fresh attack per batch: secml-torch leaves the last batch's radii in the attack's constraint
            adversarial.append(_HOFMN(steps, params)._run(wrapped, xb, yb)[0].detach())
    x_adv = torch.cat(adversarial)
    with torch.no_grad():
        fooled = torch.cat([model(xb.to(device)).argmax(1).cpu() != yb for xb, yb in zip(x_adv.split(batch_size), y.split(batch_size))])
    distances = (x_adv - x).flatten(1).abs().amax(1)
    moved = distances > 0
    if (moved & ~fooled).any():
        log.warning("FMN: %d returned points are not misclassified on a second pass; counted as not found", int((moved & ~fooled).sum()))
    return torch.where(fooled, distances, torch.full_like(distances, float("inf"))), x_adv
