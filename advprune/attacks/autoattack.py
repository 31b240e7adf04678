"""Standard AutoAttack (Croce & Hein, ICML 2020): our own APGD-CE, APGD-T, FAB-T and Square, written after the
original implementation (github.com/fra31/auto-attack, `version='standard'` as its `_set_version` sets it).

Each part (advprune.attacks.apgd, .fab, .square) follows the original operation for operation with the same
random draws, and returns the original's points; it is faster because FAB-T's target classes run side by
side in one batch, FAB reuses a forward pass the original runs twice, Square skips work whose result it never
uses, and no per-call wrappers sit around the model. advprune.evaluation attacks the model through its attack
view (advprune.attacks.fused: BatchNorm folded, max pooling on the fast CPU kernel). `benchmarks/autoattack.py`
measures it against the original (`pyautoattack`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torchattacks

from advprune.attacks.apgd import apgd_ce, apgd_targeted
from advprune.attacks.fab import fab_targeted
from advprune.attacks.square import square_linf

log = logging.getLogger(__name__)

N_TARGETS = 9  # target classes of APGD-T and FAB-T in the original standard version
# (iterations of APGD and FAB, Square's queries). "rehearsal" runs every part and code path with a budget too small
# to mean anything: only `advprune rehearse` uses it, to check a configuration end to end in seconds; its records
# say so (`autoattack_version`) and are never results.
VERSIONS = {"standard": (100, 5000), "rehearsal": (3, 20)}
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
        version (str): 'standard', or 'rehearsal' (the same parts with 3 iterations and 20 queries: a smoke test
            of a configuration, never a result). (Default: 'standard')
        seed (int): seed every part starts from, on every batch, as the original does. (Default: 0)
        batch_size (int): points per attack call, as the original's `run_standard_evaluation(batch_size=)`.
            Results depend on it, since every part reseeds per batch as in the original (which defaults to 250).
            (Default: 500)
        log_progress (bool): log one line per attack (name, robust accuracy, seconds). (Default: True)
        max_batch (int): most points per model call, which bounds memory: FAB-T runs the targets of a batch
            side by side, up to min(9, n_classes - 1) x batch_size points at once. Does not change results.
            (Default: min(9, n_classes - 1) x batch_size)

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

    Unlike `torchattacks.AutoAttack` (10-step parts, Square's p schedule rescaled to n_queries, n_classes - 1
    targets, no batching), this is the original's standard version.

    Differences from the original (`pyautoattack`), none of which changes a result:
        - FAB-T attacks all target classes of a batch at once and keeps, per point, the first target (in the
          original's order) that broke it (FAB-T draws nothing at random, so the targets do not interact);
        - FAB-T's "is the iterate adversarial?" pass also serves the next gradient when no point moved;
        - Square skips the cross-entropy and query counts it computes but never uses with the margin loss;
        - the sanity checks of `run_standard_evaluation` (randomised defence, probability outputs, ...) and
          its state file are left out; the model must output logits;
        - with `seed=None` it seeds from the clock; here the seed is an int, and since every part calls
          `torch.manual_seed` (which also reseeds CUDA), the call runs inside `torch.random.fork_rng` so the
          caller's RNG stream is left as it was.
    Points are evaluated in other batch compositions than the original's (FAB-T's targets side by side,
    chunks of max_batch); where a kernel's blocking depends on the batch size (oneDNN for small batches, cuDNN) a logit
    can then differ by float rounding, which changes a result only where an attack sits on a knife edge.
    The model runs in eval mode with its parameters' `requires_grad` off (FAB backpropagates through the
    logits, which would otherwise fill `.grad`); both are restored afterwards.

    With norm='L2', Square is torchattacks 3.5.1's, which deviates from the original: it measures the
    windows' norms over all channels at once, the original per channel (identical for one channel), and does
    not cap the square's side at min(H, W) (matters only for very elongated images).
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
        max_batch: int | None = None,
    ):
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {', '.join(VERSIONS)}, got {version!r}")
        if version != "standard" and norm != "Linf":
            raise ValueError(f"version {version!r} is only for Linf")
        if norm not in ("Linf", "L2"):
            raise ValueError(f"norm must be 'Linf' or 'L2', got {norm!r}")
        if n_classes < 4:
            raise ValueError("AutoAttack's targeted DLR loss needs at least 4 classes")
        if eps <= 0 or batch_size < 1:
            raise ValueError("AutoAttack needs eps > 0 and batch_size >= 1")
        self.model, self.norm, self.eps, self.n_classes, self.version = model, norm, float(eps), int(n_classes), version
        self.seed, self.batch_size, self.log_progress = int(seed), int(batch_size), log_progress
        self.n_targets = min(N_TARGETS, self.n_classes - 1)
        self.max_batch = int(max_batch) if max_batch is not None else self.n_targets * self.batch_size
        if self.max_batch < 1:
            raise ValueError("AutoAttack needs max_batch >= 1")
        eps, seed, chunk, targets = self.eps, self.seed, self.max_batch, self.n_targets
        n_iter, n_queries = VERSIONS[version]
        # Square with L2 stays torchattacks' (see the class docstring); with Linf it is ours.
        self.square = None if norm == "Linf" else torchattacks.Square(model, n_queries=5000, n_restarts=1, p_init=0.8, loss="margin", resc_schedule=False, norm=norm, eps=self.eps, seed=self.seed)
        self.attacks = {
            "apgd-ce": lambda x, y: apgd_ce(model, x, y, eps, norm, seed, chunk, n_iter),
            "apgd-t": lambda x, y: apgd_targeted(model, x, y, eps, norm, seed, targets, chunk, n_iter),
            "fab-t": lambda x, y: fab_targeted(model, x, y, eps, norm, targets, chunk, n_iter),
            "square": (lambda x, y: square_linf(model, x, y, eps, seed, n_queries)) if self.square is None else self.square,
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
        if self.square is not None:
            self.square.set_device(x.device)
        for name, attack in self.attacks.items():
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
