"""PwoA (Jian, Wang, Wang, Dy, Ioannidis, ICDM 2022, "Pruning Adversarially Robust Neural Networks without
Adversarial Examples"): ADMM pruning of a robust model, trained on natural examples only, that keeps its
robustness by self-distillation from the dense model and an HSIC bottleneck on its hidden features.

The student is the input model; the teacher is a frozen copy of it (eval mode). Per batch (x, y):

    L = distill_weight * T^2 * mean_{batch, classes} KL(softmax(z_teacher / T) || softmax(z_student / T))
      + sum_j [ lambda_x * nHSIC(X, Z_j) - lambda_y * nHSIC(Y, Z_j) ]      (HSIC bottleneck; see admm_hsic)
      + sum_l rho / 2 * ||W_l - Z_l + U_l||^2                              (ADMM phase only)
      + ce_weight * CE(z_student, y)                                       (0 in the official scripts)

Phases, each through `context.fit` (resumable; curves in info["curves"]["admm" | "retrain"], one row per pass):
  1. "admm" (admm_epochs): Z_l starts as Proj(W_l), U_l = 0. After every epoch (official: at the start of the
     next one, the same point in the update sequence):
       - every rho_every-th epoch: rho <- min(rho_max, rho_factor * rho); Z_l <- Proj(W_l + U_l);
         U_l <- U_l + W_l - Z_l;
       - otherwise, with reset_z_each_epoch (the official code re-runs admm_initialization at the start of every
         epoch): Z_l <- Proj(W_l), U_l kept.
     Proj keeps, in each prunable layer, the (1 - sparsity) fraction of largest |.| (the official prune ratio is
     one uniform per-layer ratio, "irregular" sparsity).
  2. hard prune: per-layer magnitude masks of W to the target sparsity (exact counts, masks_from_scores);
     info["hard_prune"] records the prune gap of the dense model and of W, and the clean validation accuracy
     just before and after it;
  3. "retrain" (retrain_epochs): the same loss without the ADMM term, with the mask fixed (the trainer zeroes
     pruned weights after every step; the official code multiplies their gradients by the mask: the same
     weights, since a zero weight gets no weight decay either). The model keeps the retraining pass with the
     best robust validation accuracy (PGD with the pretraining attack; info["selected_epoch"]): the official
     code keeps the retraining epoch with the best robust *test* accuracy (misc.eval_and_save, PGD-10).

The schedule is written in optimizer steps (`epoch_steps`, default 391). The official constants are epochs of
CIFAR-10 at batch 128, 391 optimizer steps each: 50 ADMM epochs (19,550 steps), a rho update every 3 (1,173),
100 retraining epochs. What an ADMM cycle achieves is a number of steps, not of passes over the data: its
W-step pulls W towards Z - U with SGD at lr 0.01 and momentum 0.9, which contracts the distance by at best
sqrt(0.9) per step, and the dual U grows by what is left at every update. On digits (10 steps per pass) the
same 50 epochs as passes, 500 steps, end with rho at its cap and the prune gap 0.77 -> 0.41 at 90 % sparsity
(the U terms it leaves even open the gap again mid-phase), and validation PGD-20 after retraining 47.2 %
against 87.96 % dense; 1,000 / 1,500 / 2,000 steps close it to 0.17 / 0.097 / 0.064 with 65.3 / 75.9 / 79.6 %
(seed 0, the pipeline's width-32 model; retraining 6 passes, the last kept, and for 2,000 steps 8 passes, the best
robust one kept; the default's former 9 passes left the gap at 0.754). An epoch of the
schedule is therefore round(epoch_steps / steps per pass) passes over the training split, at least one, and
everything the official code counts in epochs counts in these: admm_epochs, rho_every, the Z reset after each
epoch, the ADMM learning-rate staircase (a tenth lower after each third of a cycle: exact for rho_every a
multiple of 3, the official 3), retrain_epochs (the cosine then steps per pass). On CIFAR-10 with a 10 %
validation split (352 steps per pass), CIFAR-100 and MNIST an epoch is one pass, as officially; on digits it is
39 passes, the official step counts, which the embedded default shortens by a smaller epoch_steps
(config/config.yaml) and the convergence report checks.

Convergence (info["convergence"], lifted into the records by scripts/prune.py): ADMM ran its course when rho
reached rho_max (0.01 x 1.35^16 > 1: 16 updates, at the official constants the update before the last two
epochs) and the prune gap closed, ||W - Proj(W)|| / ||W|| at the hard prune <= GAP_CLOSED = 10 % of the dense
model's: ADMM then removed at least 90 % of the weight norm a magnitude prune of the dense model removes (99 %
of its energy), so the hard prune changes the network little (on digits at 90 %: gap 0.064 of 0.770, clean
validation accuracy 99.5 -> 98.1 % across the hard prune); otherwise what runs is closer to magnitude pruning
and retraining, which the report names. At 99 % on digits 2,000 ADMM steps close the gap only to 0.31 of 0.96
(hard prune: 98.1 -> 10.2 % clean): not converged.

nHSIC is the official "normalised-CCA" HSIC (source/hsicbt/math/hsic.py, hsic_normalized_cca):
    Kc = K H (H = I - 11^T / m),  R = Kc (Kc + eps m I)^-1,  nHSIC(A, B) = sum_ij R_A[i, j] R_B[j, i] = tr(R_A R_B)
with a Gaussian kernel exp(-||a - b||^2 / (2 sigma^2 d)) (d = the flattened feature dimension: sigma is scaled by
sqrt(d)) for the input X and the hidden features Z_j, and a linear kernel on the one-hot labels Y. It is not
bounded by 1: R ~ a projector on the significant eigen-directions of the centred kernel, so nHSIC(A, A) is about
the number of those (c - 1 for one-hot labels of c classes) and nHSIC of independent A, B is about
rank_A * rank_B / m.

Hidden features Z_j (the official models return them with the logits; here forward hooks, one rule for every
architecture): walk the model's children, entering nn.Sequential containers; of the units found,
  - the input of the first composite block (a unit with Conv2d/Linear inside that is not itself one),
  - the output of every composite block and of every nn.ReLU unit,
  - the input of the last nn.Linear (the penultimate features),
each tensor once (a ReLU's in-place output that feeds the classifier is counted once). This gives exactly the
official lists for the residual networks -- ResNet-18: stem output, the 8 BasicBlock outputs, the pooled
features (10); WRN: stem conv output, every block output, the pooled features -- and, for plain sequential
networks (small_cnn, vgg16_bn), every ReLU output as the official LeNet does (the official VGG16 taps only its
4 conv stage outputs and 2 FC hiddens; vgg16_bn here gets 13 + 2).

Adversarial mixing (official `--mix_ratio`, "mix" variant): each batch is replaced, with probability mix_ratio
(a generator seeded by the seed, saved across a resume), by PGD examples with the pretraining attack and eps,
on which every term is then computed. mix_ratio 0 (default, pure PwoA) builds no attack at all, and the phases
then validate without the robust metric (val_robust_acc NaN): nothing in the prune job attacks the model.

Curve columns besides the trainer's (per-epoch means over the training examples; raw terms, the weights apply
in the loss): loss_distill (T^2 KL), loss_hsic_x and loss_hsic_y (sums over the taps), loss_ce, adv_batches
(fraction of batches replaced by PGD examples); in the ADMM phase also loss_admm, rho (the rho of that epoch)
and prune_gap (||W - Proj(W)|| / ||W|| over all prunable layers after the epoch: the weight norm a hard prune
would remove, which ADMM drives towards 0).

Defaults: official scripts/cifar10.sh with config/general-prune-hsicbt-cifar10.yaml and bin/run_hsicbt
(source/hsicbt/core/{engine.py, train_hsic_prune.py, train_misc.py}, math/{admm.py, hsic.py}): T 30, alpha 10,
lambda_x 2e-5, lambda_y 1e-4, sigma 5, eps 1e-5, linear label kernel, xentropy weight 0, ADMM 50 epochs at
lr 0.01, rho 0.01 x1.35 (at most 1) every 3 epochs, retraining 100 epochs at lr 0.005 cosine, SGD momentum 0.9,
weight decay 1e-4, batch 128, mix_ratio 0.

Deviations and unverified points:
  - HSIC in the ADMM phase (admm_hsic, default false): the official script passes lambda_x/lambda_y only to the
    retraining (`-relx/-rely`); the config's lambda_x/lambda_y are 0 and the code skips HSIC unless both are
    positive, so its ADMM phase trains with distillation + ADMM only. The paper's text (not read here) may mean
    HSIC in both phases: admm_hsic true. An HSIC term is computed only where its lambda is positive in the
    phase's loss (no curve column otherwise), so an epoch's time is the method's; it enters the loss when its
    own lambda is positive (official: both terms only when both lambdas are).
  - ADMM-phase learning rate: the official one restarts at lr every rho_every epochs and divides by 10 every
    rho_every / 3 epochs (0.01, 0.001, 0.0001, 0.01, ...): admm_lr_schedule cyclic_step (default) with
    cycle = rho_every; cosine and constant are alternatives. Officially the rate is set after each step, so an
    epoch's first step runs at the previous epoch's rate (one step in 391).
  - Retraining cosine: per pass, to 0 (official: per iteration, to 4e-8); with several passes per epoch close.
  - Checkpoint selection on the validation split with the pretraining's attack (official: test, PGD-10); every
    retraining pass is a candidate (official: every epoch).
  - Projections and the hard prune remove exactly round(sparsity * n) weights per layer (ties by index); the
    official np.percentile threshold may keep a few more. Which layers: prunable_weights (every Conv2d/Linear,
    the first and last unless include_first_last is false); the official code prunes every 4-D weight and a
    parameter named 'fc.weight' (so its ResNet-18 keeps the final 'linear' dense).
  - HSIC kernels on the device in float64 (official: CPU float32 with an explicit inverse); squared distances
    clamped at 0 (official: abs).
  - The KL target is the teacher's logits under no_grad (official: the same values).
  - Mixed batches: our PGD on the eval-mode student with BatchNorm folded (official: torchattacks.PGD, which
    also puts the model in eval mode), draw from a torch generator (official: np.random).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from advprune.attacks.pgd import PGD
from advprune.models.weights import prunable_weights
from advprune.pruning import PruneResult, PruningMethod, masks_from_scores, register_method
from advprune.training import TrainSettings, apply_masks
from advprune.training.losses import Objective
from advprune.training.trainer import accuracy

OFFICIAL_EPOCH_STEPS = 391  # optimizer steps of one epoch of the official runs: CIFAR-10's 50,000 training images at batch 128
GAP_CLOSED = 0.1  # the prune gap is closed at this fraction of the dense model's (module docstring)


@register_method("pwoa")
class PwoA(PruningMethod):
    ap_criterion = "SOLWM"

    def __init__(self, temperature: float = 30.0, distill_weight: float = 10.0, ce_weight: float = 0.0, lambda_x: float = 2e-5,
                 lambda_y: float = 1e-4, sigma: float = 5.0, hsic_eps: float = 1e-5, admm_hsic: bool = False, rho0: float = 0.01,
                 rho_factor: float = 1.35, rho_max: float = 1.0, rho_every: int = 3, reset_z_each_epoch: bool = True, admm_epochs: int = 50,
                 retrain_epochs: int = 100, epoch_steps: int | None = OFFICIAL_EPOCH_STEPS, lr: float = 0.01, retrain_lr: float = 0.005,
                 admm_lr_schedule: str = "cyclic_step", batch_size: int = 128, momentum: float = 0.9, weight_decay: float = 1e-4,
                 mix_ratio: float = 0.0):
        def check(ok: bool, what: str, value) -> None:
            if not ok:
                raise ValueError(f"pwoa: {what}, not {value!r}")

        positive = {"temperature": temperature, "sigma": sigma, "hsic_eps": hsic_eps, "rho0": rho0, "lr": lr, "retrain_lr": retrain_lr}
        for key, value in positive.items():
            check(_is_number(value) and value > 0, f"{key} must be a number > 0", value)
        non_negative = {"distill_weight": distill_weight, "ce_weight": ce_weight, "lambda_x": lambda_x, "lambda_y": lambda_y,
                        "weight_decay": weight_decay}
        for key, value in non_negative.items():
            check(_is_number(value) and value >= 0, f"{key} must be a number >= 0", value)
        check(_is_number(rho_factor) and rho_factor >= 1, "rho_factor must be a number >= 1", rho_factor)
        check(_is_number(rho_max) and rho_max >= rho0, "rho_max must be a number >= rho0", rho_max)
        check(_is_number(momentum) and 0 <= momentum <= 1, "momentum must be in [0, 1]", momentum)
        check(_is_number(mix_ratio) and 0 <= mix_ratio <= 1, "mix_ratio must be in [0, 1] (0 = pure PwoA, no attack)", mix_ratio)
        integers = (("rho_every", rho_every, 1), ("admm_epochs", admm_epochs, 0), ("retrain_epochs", retrain_epochs, 0),
                    ("batch_size", batch_size, 2))
        for key, value, low in integers:
            check(isinstance(value, int) and not isinstance(value, bool) and value >= low, f"{key} must be an integer >= {low}", value)
        check(epoch_steps is None or (isinstance(epoch_steps, int) and not isinstance(epoch_steps, bool) and epoch_steps >= 1),
              "epoch_steps must be null or an integer >= 1", epoch_steps)
        for key, value in (("admm_hsic", admm_hsic), ("reset_z_each_epoch", reset_z_each_epoch)):
            check(isinstance(value, bool), f"{key} must be true or false", value)
        check(admm_lr_schedule in ("cyclic_step", "cosine", "constant"), "admm_lr_schedule must be 'cyclic_step', 'cosine' or 'constant'",
              admm_lr_schedule)

        self.temperature, self.distill_weight, self.ce_weight = float(temperature), float(distill_weight), float(ce_weight)
        self.lambda_x, self.lambda_y, self.sigma, self.hsic_eps = float(lambda_x), float(lambda_y), float(sigma), float(hsic_eps)
        self.admm_hsic, self.reset_z_each_epoch, self.mix_ratio = admm_hsic, reset_z_each_epoch, float(mix_ratio)
        self.rho0, self.rho_factor, self.rho_max, self.rho_every = float(rho0), float(rho_factor), float(rho_max), rho_every
        self.admm_epochs, self.retrain_epochs, self.epoch_steps = admm_epochs, retrain_epochs, epoch_steps
        self.lr, self.retrain_lr, self.admm_lr_schedule = float(lr), float(retrain_lr), admm_lr_schedule
        self.common = {"batch_size": batch_size, "momentum": momentum, "weight_decay": weight_decay}

    def passes_per_epoch(self, n_train: int) -> int:
        """Passes over a training split of n_train examples that make one epoch of the schedule (at least one)."""
        steps_per_pass = -(-n_train // self.common["batch_size"])
        return max(1, round(self.epoch_steps / steps_per_pass)) if self.epoch_steps else 1

    def prune(self, model, sparsity, context):
        teacher = copy.deepcopy(model).eval().requires_grad_(False)
        weights = prunable_weights(model, context.include_first_last)
        taps = hidden_taps(model)
        attack = None
        if self.mix_ratio > 0:
            settings = context.objective["attack"]
            attack = PGD(context.threat_model["eps"], settings["step_size"], settings["steps"], settings.get("random_start", True))
        passes = self.passes_per_epoch(len(context.train))
        admm_settings = TrainSettings(epochs=self.admm_epochs * passes, lr=self.lr, schedule=self.admm_lr_schedule, cycle=self.rho_every * passes,
                                      **self.common)
        retrain_settings = TrainSettings(epochs=self.retrain_epochs * passes, lr=self.retrain_lr, schedule="cosine", **self.common)

        admm = ADMM(weights, sparsity, self.rho0, self.rho_factor, self.rho_max, self.rho_every * passes, self.reset_z_each_epoch, passes)
        dense_gap = admm.prune_gap()
        admm_loss = PwoALoss(self, teacher, taps, admm=admm, hsic_in_loss=self.admm_hsic, attack=attack, seed=context.seed * 2)
        # nothing is selected in the ADMM phase: it attacks the validation split only where training attacks anyway
        curves = {"admm": context.fit(model, admm_loss, admm_settings, phase="admm", validate_robust=attack is not None)}

        masks = masks_from_scores({name: w.detach().abs() for name, w in weights.items()}, sparsity, "layer")
        hard_prune = {"prune_gap_dense": dense_gap, "prune_gap": admm.prune_gap(), "val_clean_acc_before": accuracy(model, context.val)}
        apply_masks(model, masks)
        hard_prune["val_clean_acc_after"] = accuracy(model, context.val)
        retrain_loss = PwoALoss(self, teacher, taps, admm=None, hsic_in_loss=True, attack=attack, seed=context.seed * 2 + 1)
        # the official code keeps the retraining epoch of best robust (test) accuracy; here the best robust validation accuracy
        curves["retrain"] = context.fit(model, retrain_loss, retrain_settings, phase="retrain", masks=masks, keep_best="val_robust_acc")
        selected = max(curves["retrain"], key=lambda row: row["val_robust_acc"], default=None)  # the first maximum, as keep_best
        info = {"taps": [f"{name}:{where}" for name, _, where in taps], "passes_per_epoch": passes, "rho_final": admm.rho,
                "mix_ratio": self.mix_ratio, "hard_prune": hard_prune, "selected_epoch": selected["epoch"] if selected else None, "curves": curves,
                "convergence": convergence(admm, curves["admm"], hard_prune, self.rho_max)}
        return PruneResult(masks=masks, info=info)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def convergence(admm: ADMM, curve: list[dict], hard_prune: dict, rho_max: float) -> dict:
    """Whether the ADMM phase ran its course: rho reached its cap and the prune gap closed to GAP_CLOSED of the dense
    model's (module docstring), so that the hard prune removes little of what ADMM trained."""
    gap, closed = hard_prune["prune_gap"], GAP_CLOSED * hard_prune["prune_gap_dense"]
    checks = {
        "rho_cap": {"value": admm.rho, "target": rho_max, "ok": admm.rho >= rho_max * (1 - 1e-9)},
        "prune_gap": {"value": gap, "target": closed, "ok": gap <= closed},
    }
    summary = (f"rho {admm.rho:.3g} (cap {rho_max:.3g}) after {len(curve)} ADMM passes; prune gap {hard_prune['prune_gap_dense']:.3f} -> "
               f"{gap:.3f} (closed at <= {closed:.3f}); hard prune: val clean {hard_prune['val_clean_acc_before']:.3f} -> "
               f"{hard_prune['val_clean_acc_after']:.3f}")
    return {"converged": all(c["ok"] for c in checks.values()), "summary": summary, "checks": checks}


# --- HSIC -------------------------------------------------------------------------------------------------------

def centered_kernel(features: torch.Tensor, kind: str = "gaussian", sigma: float = 5.0) -> torch.Tensor:
    """K H for a batch of features (flattened per example), in float64. Gaussian: exp(-||a - b||^2 / (2 sigma^2 d));
    linear: a . b."""
    f = features.flatten(1)
    gram = f @ f.T
    if kind == "gaussian":
        sq = gram.diagonal()
        dist = (sq[:, None] + sq[None, :] - 2 * gram).clamp_min(0)
        k = torch.exp(-dist.double() / (2 * sigma**2 * f.shape[1]))
    elif kind == "linear":
        k = gram.double()
    else:
        raise ValueError(f"unknown kernel {kind!r} (gaussian | linear)")
    return k - k.mean(dim=1, keepdim=True)  # K H: every row minus its mean


def kernel_projector(kc: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """R = Kc (Kc + eps m I)^-1, the regularised projector of normalised-CCA HSIC."""
    m = kc.shape[0]
    return torch.linalg.solve(kc + eps * m * torch.eye(m, dtype=kc.dtype, device=kc.device), kc, left=False)


def nhsic_from_projectors(r_a: torch.Tensor, r_b: torch.Tensor) -> torch.Tensor:
    return (r_a * r_b.T).sum()


def normalized_hsic(a: torch.Tensor, b: torch.Tensor, kernel_a: str = "gaussian", kernel_b: str = "gaussian", sigma: float = 5.0,
                    eps: float = 1e-5) -> torch.Tensor:
    """nHSIC(A, B) = tr(R_A R_B) (official hsic_normalized_cca), as float64."""
    r_a = kernel_projector(centered_kernel(a, kernel_a, sigma), eps)
    return nhsic_from_projectors(r_a, kernel_projector(centered_kernel(b, kernel_b, sigma), eps))


# --- hidden features ------------------------------------------------------------------------------------------

def _units(module: nn.Module, prefix: str = ""):
    for name, child in module.named_children():
        if isinstance(child, nn.Sequential):
            yield from _units(child, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", child


def hidden_taps(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(module name, module, 'input' | 'output') of the hidden features the HSIC terms use (rule: module docstring)."""
    weighted = (nn.Conv2d, nn.Linear)
    units = list(_units(model))
    blocks = {name for name, m in units if not isinstance(m, weighted) and any(isinstance(c, weighted) for c in m.modules())}
    taps = []
    first_block = next((u for u in units if u[0] in blocks), None)
    if first_block is not None:
        taps.append((*first_block, "input"))
    taps += [(name, m, "output") for name, m in units if name in blocks or isinstance(m, nn.ReLU)]
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears:
        taps.append((*linears[-1], "input"))
    return taps


@contextmanager
def _collect(taps):
    """Hidden features of the forward passes inside the block, in call order, each tensor once."""
    hiddens: list[torch.Tensor] = []

    def keep(t):
        if not any(t is h for h in hiddens):
            hiddens.append(t)

    handles = []
    for _, module, where in taps:
        if where == "input":
            handles.append(module.register_forward_pre_hook(lambda mod, args: keep(args[0])))
        else:
            handles.append(module.register_forward_hook(lambda mod, args, out: keep(out)))
    try:
        yield hiddens
    finally:
        for h in handles:
            h.remove()


# --- ADMM -----------------------------------------------------------------------------------------------------

class ADMM:
    """Auxiliary Z (sparse) and scaled dual U per prunable weight, and the penalty rho/2 ||W - Z + U||^2."""

    def __init__(self, weights: dict[str, torch.Tensor], sparsity: float, rho: float, rho_factor: float, rho_max: float, every: int,
                 reset_z_each_epoch: bool, epoch_passes: int = 1):
        self.weights, self.sparsity = weights, sparsity
        self.rho, self.rho_factor, self.rho_max, self.every, self.reset_z_each_epoch = rho, rho_factor, rho_max, every, reset_z_each_epoch
        self.epoch_passes = epoch_passes  # passes over the training split per schedule epoch
        self.z = self.project({n: w.detach() for n, w in weights.items()})
        self.u = {n: torch.zeros_like(w, requires_grad=False) for n, w in weights.items()}

    def project(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Euclidean projection on the layer-wise sparsity set: the smallest |.| of each layer set to 0."""
        masks = masks_from_scores({n: t.abs() for n, t in tensors.items()}, self.sparsity, "layer")
        return {n: t * masks[n] for n, t in tensors.items()}

    def penalty(self) -> torch.Tensor:
        return sum(0.5 * self.rho * (w - self.z[n] + self.u[n]).pow(2).sum() for n, w in self.weights.items())

    @torch.no_grad()
    def epoch_end(self, epoch: int) -> None:
        """After pass `epoch` (0-based): the update every `every` passes, else Z reset after each schedule epoch."""
        w = {n: p.detach().clone() for n, p in self.weights.items()}
        if (epoch + 1) % self.every == 0:
            self.rho = min(self.rho_max, self.rho * self.rho_factor)
            self.z = self.project({n: w[n] + self.u[n] for n in w})
            self.u = {n: self.u[n] + w[n] - self.z[n] for n in w}
        elif self.reset_z_each_epoch and (epoch + 1) % self.epoch_passes == 0:
            self.z = self.project(w)

    @torch.no_grad()
    def prune_gap(self) -> float:
        w = {n: p.detach() for n, p in self.weights.items()}
        removed = sum(float((t - p).pow(2).sum()) for t, p in zip(w.values(), self.project(w).values()))
        return (removed / max(sum(float(t.pow(2).sum()) for t in w.values()), 1e-30)) ** 0.5

    def state_dict(self) -> dict:
        return {"rho": self.rho, "z": self.z, "u": self.u}

    def load_state_dict(self, state: dict) -> None:
        # resume states load on the CPU; Z and U live beside their weights
        self.rho = float(state["rho"])
        self.z = {n: state["z"][n].to(w.device) for n, w in self.weights.items()}
        self.u = {n: state["u"][n].to(w.device) for n, w in self.weights.items()}


# --- the loss -------------------------------------------------------------------------------------------------

class PwoALoss(Objective):
    """One phase's PwoA loss; keeps per-epoch sums of its terms (curve columns) and, in the ADMM phase, Z/U/rho."""

    name = "pwoa"
    adversarial = False

    def __init__(self, cfg: PwoA, teacher: nn.Module, taps, admm: ADMM | None, hsic_in_loss: bool, attack: PGD | None, seed: int):
        self.cfg, self.teacher, self.taps, self.admm, self.attack = cfg, teacher, taps, admm, attack
        self.attack_steps = attack.steps * cfg.mix_ratio if attack is not None else 0  # expected per batch: a batch is attacked w.p. mix_ratio
        # an HSIC term is computed only where it has a weight in this phase's loss, so that an epoch's time is the method's
        self.hsic_terms = [key for key, weight in (("x", cfg.lambda_x), ("y", cfg.lambda_y)) if hsic_in_loss and weight > 0]
        self.generator = torch.Generator().manual_seed(seed)
        self._reset()

    def _reset(self) -> None:
        keys = ("loss_distill", *(f"loss_hsic_{k}" for k in self.hsic_terms), "loss_ce", *(("loss_admm",) if self.admm is not None else ()))
        self.sums = dict.fromkeys(keys, 0.0)
        self.seen = self.batches = self.adv_batches = 0

    def __call__(self, model, x, y):
        cfg = self.cfg
        adversarial = self.attack is not None and float(torch.rand((), generator=self.generator)) < cfg.mix_ratio
        if adversarial:
            x = self._in_eval(model, lambda view: self.attack.perturb(view, x, y))
        with _collect(self.taps if self.hsic_terms else []) as hiddens:
            logits = model(x)
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        t = cfg.temperature
        kl = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1), reduction="none", log_target=True)
        distill = t * t * kl.mean()  # nn.KLDivLoss's default 'mean': over batch x classes, as the official code
        ce = F.cross_entropy(logits, y)
        loss = cfg.distill_weight * distill + cfg.ce_weight * ce
        terms = {"loss_distill": distill, "loss_ce": ce}
        if self.hsic_terms:
            hsic = self._hsic(x, y, hiddens, logits.shape[1])
            sign = {"x": cfg.lambda_x, "y": -cfg.lambda_y}
            for key, value in hsic.items():
                loss = loss + sign[key] * value.to(loss.dtype)
                terms[f"loss_hsic_{key}"] = value
        if self.admm is not None:
            terms["loss_admm"] = self.admm.penalty()
            loss = loss + terms["loss_admm"]
        n = len(y)
        for key, value in terms.items():  # summed on the device: no host sync per batch
            self.sums[key] = self.sums[key] + value.detach() * n
        self.adv_batches += adversarial
        self.seen += n
        self.batches += 1
        return loss, logits

    def _hsic(self, x, y, hiddens, n_classes) -> dict[str, torch.Tensor]:
        """The phase's HSIC terms, summed over the hidden features: {"x": sum_j nHSIC(X, Z_j), "y": sum_j nHSIC(Y, Z_j)}."""
        cfg = self.cfg
        kernels = {"x": lambda: centered_kernel(x.detach(), "gaussian", cfg.sigma),
                   "y": lambda: centered_kernel(F.one_hot(y, n_classes).float(), "linear")}
        given = {key: kernel_projector(kernels[key](), cfg.hsic_eps) for key in self.hsic_terms}
        sums = dict.fromkeys(self.hsic_terms, 0)
        for z in hiddens:
            r_z = kernel_projector(centered_kernel(z, "gaussian", cfg.sigma), cfg.hsic_eps)
            for key, r in given.items():
                sums[key] = sums[key] + nhsic_from_projectors(r_z, r)
        return {key: torch.as_tensor(value) for key, value in sums.items()}

    def epoch_end(self, model, epoch):
        row = {key: float(value) / max(self.seen, 1) for key, value in self.sums.items()}
        row["adv_batches"] = self.adv_batches / max(self.batches, 1)
        if self.admm is not None:
            row["rho"] = self.admm.rho
            self.admm.epoch_end(epoch)
            row["prune_gap"] = self.admm.prune_gap()
        self._reset()
        return row

    def state_dict(self):
        return {"generator": self.generator.get_state(), "admm": self.admm.state_dict() if self.admm is not None else None}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])
        if self.admm is not None:
            self.admm.load_state_dict(state["admm"])
