"""APGD-CE and APGD-T (Croce & Hein, ICML 2020) as AutoAttack's standard version runs them, Linf and L2.

Written after the original (github.com/fra31/auto-attack, `autopgd_base.py`, eot_iter 1, no large-eps
schedule), operation for operation and with the same draws from torch's global CPU generator, so that a call
returns what the original's `perturb` returns for the same seed, without the per-call wrappers (device
moves, input checks, mode switches) the original puts around the model.

APGD-T runs its target classes one after another, as the original does. Running them side by side in one batch
was tried: each break at target k forces the later targets to be redrawn and rerun (the original draws target
k's random start for the points still robust after targets < k), and on 2 CPU cores the 9x larger batch also
ran slower per point, so it cost 1.75x the original's time on small_cnn.

Chunks of max_batch points can change a logit by float rounding where a kernel's blocking depends on the batch
size (oneDNN, cuDNN); a result then differs only where the attack sits on a knife edge.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from advprune.attacks.state import Checkpoint

N_ITER = 100
RHO = 0.75


def _checkpoints(n_iter: int) -> tuple[int, int, int]:
    """The step-size schedule's checkpoints, as the original derives them from n_iter."""
    return max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1), max(int(0.03 * n_iter), 1)


def _per_point(v: torch.Tensor, ndims: int) -> torch.Tensor:
    return v.view(-1, *([1] * ndims))


def _normalize(x: torch.Tensor, norm: str) -> torch.Tensor:
    ndims = x.dim() - 1
    if norm == "Linf":
        t = x.abs().view(x.shape[0], -1).max(1)[0]
    else:
        t = (x**2).view(x.shape[0], -1).sum(-1).sqrt()
    return x / (_per_point(t, ndims) + 1e-12)


def _l2_norm(x: torch.Tensor) -> torch.Tensor:
    return (x**2).view(x.shape[0], -1).sum(-1).sqrt().view(-1, *([1] * (x.dim() - 1)))


def ce_loss(logits: torch.Tensor, y: torch.Tensor, y_target: torch.Tensor | None) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, y_target: torch.Tensor) -> torch.Tensor:
    x_sorted = logits.sort(dim=1)[0]
    u = torch.arange(logits.shape[0], device=logits.device)
    return -(logits[u, y] - logits[u, y_target]) / (x_sorted[:, -1] - 0.5 * (x_sorted[:, -3] + x_sorted[:, -4]) + 1e-12)


def random_start(x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """The original's start: drawn on the CPU generator whatever the device, so CPU and GPU runs share it."""
    t = (2 * torch.rand(x.shape) - 1) if norm == "Linf" else torch.randn(x.shape)
    return x + eps * torch.ones_like(x) * _normalize(t.to(x.device), norm)


def _loss_and_grad(model, x_adv, y, y_target, loss_fn):
    x_adv.requires_grad_()
    with torch.enable_grad():
        logits = model(x_adv)
        loss_indiv = loss_fn(logits, y, y_target)
        (grad,) = torch.autograd.grad(loss_indiv.sum(), [x_adv])
    return logits.detach(), loss_indiv.detach(), grad.detach()


def single_run(model: nn.Module, x, y, start, eps: float, norm: str, loss_fn, y_target=None, n_iter: int = N_ITER) -> tuple[torch.Tensor, torch.Tensor]:
    """One APGD run from `start` (the original's `attack_single_run`); returns (still correct, last adversarial
    iterate) per point, the original's `acc` and `x_best_adv`."""
    ndims = x.dim() - 1
    n = x.shape[0]
    x_adv = start.clamp(0.0, 1.0)
    x_best = x_adv.clone()
    x_best_adv = x_adv.clone()
    # zeros, as the original's: the first oscillation check compares loss_steps[0] with the unwritten last row
    n_iter_2, n_iter_min, size_decr = _checkpoints(n_iter)
    loss_steps = torch.zeros([n_iter, n], device=x.device)

    logits, loss_indiv, grad = _loss_and_grad(model, x_adv, y, y_target, loss_fn)
    grad_best = grad.clone()
    acc = logits.max(1)[1] == y
    loss_best = loss_indiv.clone()

    step_size = 2.0 * eps * torch.ones([n, *([1] * ndims)], device=x.device)
    x_adv_old = x_adv.clone()
    k = n_iter_2
    counter3 = 0
    loss_best_last_check = loss_best.clone()
    reduced_last_check = torch.ones_like(loss_best)
    lower, upper = x - eps, x + eps
    for i in range(n_iter):
        with torch.no_grad():
            x_adv = x_adv.detach()
            grad2 = x_adv - x_adv_old
            x_adv_old = x_adv.clone()
            a = 0.75 if i > 0 else 1.0
            if norm == "Linf":
                x_adv_1 = x_adv + step_size * torch.sign(grad)
                x_adv_1 = torch.clamp(torch.min(torch.max(x_adv_1, lower), upper), 0.0, 1.0)
                x_adv_1 = torch.clamp(torch.min(torch.max(x_adv + (x_adv_1 - x_adv) * a + grad2 * (1 - a), lower), upper), 0.0, 1.0)
            else:
                x_adv_1 = x_adv + step_size * _normalize(grad, norm)
                x_adv_1 = torch.clamp(x + _normalize(x_adv_1 - x, norm) * torch.min(eps * torch.ones_like(x), _l2_norm(x_adv_1 - x)), 0.0, 1.0)
                x_adv_1 = x_adv + (x_adv_1 - x_adv) * a + grad2 * (1 - a)
                x_adv_1 = torch.clamp(x + _normalize(x_adv_1 - x, norm) * torch.min(eps * torch.ones_like(x), _l2_norm(x_adv_1 - x)), 0.0, 1.0)
            x_adv = x_adv_1 + 0.0

        logits, loss_indiv, grad = _loss_and_grad(model, x_adv, y, y_target, loss_fn)
        with torch.no_grad():
            pred = logits.max(1)[1] == y
            acc = torch.min(acc, pred)
            fooled = ~pred
            x_best_adv[fooled] = x_adv[fooled]
            improved = loss_indiv > loss_best
            loss_steps[i] = loss_indiv
            x_best[improved] = x_adv[improved]
            grad_best[improved] = grad[improved]
            loss_best[improved] = loss_indiv[improved]

            counter3 += 1
            if counter3 == k:
                rises = torch.zeros(n, device=x.device)
                for back in range(k):
                    rises += (loss_steps[i - back] > loss_steps[i - back - 1]).float()
                fl_oscillation = (rises <= k * RHO * torch.ones_like(rises)).float()
                fl_reduce_no_impr = (1.0 - reduced_last_check) * (loss_best_last_check >= loss_best).float()
                fl_oscillation = torch.max(fl_oscillation, fl_reduce_no_impr)
                reduced_last_check = fl_oscillation.clone()
                loss_best_last_check = loss_best.clone()
                reduce = fl_oscillation > 0
                step_size[reduce] /= 2.0
                x_adv[reduce] = x_best[reduce]
                grad[reduce] = grad_best[reduce]
                k = max(k - size_decr, n_iter_min)
                counter3 = 0
    return acc, x_best_adv


def _chunked_run(model, x, y, start, eps, norm, loss_fn, y_target, max_batch: int, n_iter: int = N_ITER):
    """`single_run` over chunks of at most max_batch points (the points do not interact)."""
    accs, advs = [], []
    for lo in range(0, len(x), max_batch):
        sl = slice(lo, lo + max_batch)
        acc, adv = single_run(model, x[sl], y[sl], start[sl], eps, norm, loss_fn, None if y_target is None else y_target[sl], n_iter)
        accs.append(acc)
        advs.append(adv)
    return torch.cat(accs), torch.cat(advs)


@torch.no_grad()
def apgd_ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, seed: int, max_batch: int, n_iter: int = N_ITER) -> torch.Tensor:
    """The original's `APGDAttack(loss='ce', n_restarts=1).perturb(x, y)`: x where no point broke."""
    acc = model(x).max(1)[1] == y
    adv = x.clone()
    torch.manual_seed(seed)
    idx = acc.nonzero().flatten()
    if len(idx):
        x_sub, y_sub = x[idx], y[idx]
        acc_sub, adv_sub = _chunked_run(model, x_sub, y_sub, random_start(x_sub, eps, norm), eps, norm, ce_loss, None, max_batch, n_iter)
        adv[idx[~acc_sub]] = adv_sub[~acc_sub]
    return adv


@torch.no_grad()
def apgd_targeted(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, seed: int, n_targets: int, max_batch: int,
                  n_iter: int = N_ITER, checkpoint: Checkpoint | None = None) -> torch.Tensor:
    """The original's `APGDAttack_targeted(n_restarts=1, n_target_classes=n_targets).perturb(x, y)`: one target
    class after another (the 2nd-, 3rd-, ... most likely on the clean input), each on the points still robust.
    With `checkpoint`, it can stop and continue between target classes; each target's random start comes from
    the generator where the previous one left it, so that state is saved with the results so far."""
    resumed = checkpoint.resumed if checkpoint is not None else None
    acc, adv, first = (model(x).max(1)[1] == y, x.clone(), 0) if resumed is None else (resumed["acc"], resumed["adv"], resumed["target"])
    torch.manual_seed(seed)
    if resumed is not None:
        torch.set_rng_state(resumed["rng"])
    for k in range(first, n_targets):
        idx = acc.nonzero().flatten()
        if not len(idx):
            break
        x_sub, y_sub = x[idx], y[idx]
        target = model(x_sub).sort(dim=1)[1][:, -(k + 2)]
        acc_sub, adv_sub = _chunked_run(model, x_sub, y_sub, random_start(x_sub, eps, norm), eps, norm, dlr_targeted_loss, target, max_batch, n_iter)
        acc[idx[~acc_sub]] = False
        adv[idx[~acc_sub]] = adv_sub[~acc_sub]
        if checkpoint is not None:
            checkpoint.save(lambda: {"target": k + 1, "acc": acc, "adv": adv, "rng": torch.get_rng_state()})
    return adv
