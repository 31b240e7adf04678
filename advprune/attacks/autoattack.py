"""Standard AutoAttack (Croce & Hein, ICML 2020) assembled from torchattacks' APGD, APGDT, FAB and Square.

Settings follow the original implementation's `version='standard'` (github.com/fra31/auto-attack, its
`_set_version`), not `torchattacks.AutoAttack`; see the class docstring for what differs and why.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torchattacks

log = logging.getLogger(__name__)

N_TARGETS = 9  # target classes of APGD-T and FAB-T in the original standard version
TOLERANCE = 1e-5  # float slack allowed on the eps-ball (the parts project in float32)


@dataclass
class AutoAttackResult:
    x_adv: torch.Tensor  # adversarial examples; == x where no attack succeeded
    robust: torch.Tensor  # bool N: still correct after every attack
    clean_correct: torch.Tensor  # bool N
    robust_after: dict[str, float]  # accuracy after "clean" and after each attack, in order
    seconds: dict[str, float]  # wall time per attack

    @property
    def robust_accuracy(self) -> float:
        return self.robust.float().mean().item()


class AutoAttack:
    r"""Standard AutoAttack: APGD-CE, APGD-T, FAB-T, Square, each run only on the points still robust.

    Distance Measure : Linf, L2

    Arguments:
        model (nn.Module): model to attack; takes inputs in [0, 1] (normalisation, if any, lives inside it).
        norm (str): 'Linf' or 'L2'. (Default: 'Linf')
        eps (float): radius of the threat model. (Default: 8/255)
        n_classes (int): number of classes the model outputs (checked on each call); >= 4, as the
            targeted DLR loss uses the 4th-largest logit. (Default: 10)
        version (str): only 'standard'. (Default: 'standard')
        seed (int): seed every part starts from, on every batch, as the original does. (Default: 0)
        batch_size (int): points per attack call, bounds memory. Results depend on it, since every part
            reseeds per batch as in the original (whose `run_standard_evaluation` defaults to 250). (Default: 500)
        log_progress (bool): log one line per attack (name, robust accuracy, seconds). (Default: True)

    Shape:
        - x: (N, C, H, W) float in [0, 1], y: (N,) int64, both on the model's device.
        - output: :class:`AutoAttackResult`.

    The paper's standard settings (Linf and L2 alike, as in the original):
        APGD-CE: 100 iterations, 1 restart, rho .75, CE loss;
        APGD-T: targeted DLR loss, 100 iterations, 1 restart, rho .75, min(9, n_classes - 1) targets
            (the 2nd-, 3rd-, ... most likely classes on the clean input);
        FAB-T: 100 iterations, 1 restart, alpha_max .1, eta 1.05, beta .9, min(9, n_classes - 1) targets;
        Square: 5000 queries, p_init .8, 1 restart, margin loss, the unrescaled p schedule.
    Clean-misclassified points count as non-robust from the start; an attack only sees the points no
    earlier attack broke.

    Differences from `torchattacks.AutoAttack`:
        - it keeps the parts' 10-step defaults for APGD/APGD-T/FAB; here they run 100 steps;
        - its Square rescales the p schedule to n_queries (`resc_schedule=True`, i.e. p shrinks twice as
          fast at 5000 queries); the original and this class use `resc_schedule=False`;
        - it passes `n_classes` straight to APGDT/FAB, which attack `n_classes - 1` targets (99 for
          CIFAR-100, where the original uses 9); here they get `min(9, n_classes - 1) + 1`;
        - with `seed=None` it seeds from the clock; here the seed is an int, and since every part calls
          `torch.manual_seed` (which also reseeds CUDA), the call runs inside `torch.random.fork_rng` so the
          caller's RNG stream is left as it was;
        - it attacks whole inputs without batching and reports no per-attack accuracy.
    The model runs in eval mode with its parameters' `requires_grad` off (FAB backpropagates through the
    logits, which would otherwise fill `.grad`); both are restored afterwards.

    Known deviations of torchattacks 3.5.1's parts from the original (only L2 is affected materially):
        - APGDT with L2 steps every point with the step size of the batch's first point (`step_size[0]`);
        - Square with L2 measures the windows' norms over all channels at once, the original per channel
          (identical for one channel);
        - Square does not cap the square's side at min(H, W) (matters only for very elongated images);
        - APGD/APGDT's Linf random start lacks the original's 1e-12 in its normaliser (no effect in float32).
    """

    def __init__(
        self,
        model: nn.Module,
        norm: str = "Linf",
        eps: float = 8 / 255,
        n_classes: int = 10,
        version: str = "standard",
        seed: int = 0,
        batch_size: int = 500,
        log_progress: bool = True,
    ):
        if version != "standard":
            raise ValueError(f"only version='standard' is implemented, got {version!r}")
        if norm not in ("Linf", "L2"):
            raise ValueError(f"norm must be 'Linf' or 'L2', got {norm!r}")
        if n_classes < 4:
            raise ValueError("AutoAttack's targeted DLR loss needs at least 4 classes")
        if eps <= 0 or batch_size < 1:
            raise ValueError("AutoAttack needs eps > 0 and batch_size >= 1")
        self.model, self.norm, self.eps, self.n_classes = model, norm, float(eps), int(n_classes)
        self.seed, self.batch_size, self.log_progress = int(seed), int(batch_size), log_progress
        self.n_targets = min(N_TARGETS, self.n_classes - 1)
        common = dict(norm=norm, eps=self.eps, seed=self.seed)
        # torchattacks' APGDT/FAB attack `n_classes - 1` target classes, so `n_classes` here means targets + 1.
        self.attacks = {
            "apgd-ce": torchattacks.APGD(model, steps=100, n_restarts=1, loss="ce", rho=0.75, **common),
            "apgd-t": torchattacks.APGDT(model, steps=100, n_restarts=1, rho=0.75, n_classes=self.n_targets + 1, **common),
            "fab-t": torchattacks.FAB(model, steps=100, n_restarts=1, multi_targeted=True, n_classes=self.n_targets + 1, **common),
            "square": torchattacks.Square(model, n_queries=5000, n_restarts=1, p_init=0.8, loss="margin", resc_schedule=False, **common),
        }

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> AutoAttackResult:
        x, y = x.detach(), y.detach()
        if x.min() < 0 or x.max() > 1:
            raise ValueError("AutoAttack expects inputs in [0, 1]")
        params = list(self.model.parameters())
        was_training, grad_flags = self.model.training, [p.requires_grad for p in params]
        try:
            self.model.eval()
            self.model.requires_grad_(False)
            with torch.random.fork_rng(devices=range(torch.accelerator.device_count())):
                return self._run(x, y)
        finally:
            self.model.train(was_training)
            for p, flag in zip(params, grad_flags):
                p.requires_grad_(flag)

    @torch.no_grad()
    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.model(xb).argmax(1) for xb in x.split(self.batch_size)])

    def _run(self, x: torch.Tensor, y: torch.Tensor) -> AutoAttackResult:
        with torch.no_grad():
            n_out = self.model(x[:1]).shape[1]
        if n_out != self.n_classes:
            raise ValueError(f"model outputs {n_out} classes, AutoAttack was built for n_classes={self.n_classes}")
        clean_correct = self._predict(x) == y
        robust, x_adv = clean_correct.clone(), x.clone()
        robust_after, seconds = {"clean": robust.float().mean().item()}, {}
        self._log("clean", robust_after["clean"], 0.0)
        for name, attack in self.attacks.items():
            attack.set_device(x.device)
            start = time.perf_counter()
            for idx in robust.nonzero().flatten().split(self.batch_size):
                adv = attack(x[idx], y[idx])
                fooled = self._predict(adv) != y[idx]
                robust[idx[fooled]] = False
                x_adv[idx[fooled]] = adv[fooled]
            seconds[name] = time.perf_counter() - start
            robust_after[name] = robust.float().mean().item()
            self._log(name, robust_after[name], seconds[name])
        self._check_valid(x, x_adv)
        return AutoAttackResult(x_adv, robust, clean_correct, robust_after, seconds)

    def _check_valid(self, x: torch.Tensor, x_adv: torch.Tensor) -> None:
        # The original only reports the largest perturbation; a violation here means a part is broken.
        delta = (x_adv - x).flatten(1)
        dist = delta.abs().amax(1) if self.norm == "Linf" else delta.norm(dim=1)
        if dist.max() > self.eps + TOLERANCE or x_adv.min() < 0 or x_adv.max() > 1 or x_adv.isnan().any():
            raise RuntimeError(
                f"AutoAttack produced invalid x_adv: max {self.norm} distance {dist.max().item():.6f} (eps {self.eps}), "
                f"range [{x_adv.min().item()}, {x_adv.max().item()}]"
            )

    def _log(self, name: str, accuracy: float, seconds: float) -> None:
        if self.log_progress:
            log.info("%s: robust accuracy %.2f%% (%.1f s)", name, 100 * accuracy, seconds)
