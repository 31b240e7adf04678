"""FAB-T (Croce & Hein, ICML 2020), targeted, as AutoAttack's standard version runs it: Linf and L2, 100
iterations, one restart (so no random start and no random draw at all), alpha_max .1, eta 1.05, beta .9.

Written after the original (github.com/fra31/auto-attack, `fab_base.py`/`fab_pt.py`), operation for
operation; the hyperplane projections are torchattacks' `projection_linf`/`projection_l2`, which are the
original's. Faster than the original in two ways that leave every point's trajectory as it is:

- the target classes run side by side in one batch: a point's run for one target does not depend on other
  points or targets, and the original keeps the result of the first target (in order) that breaks the point,
  which is what the results are resolved to here;
- each iteration's forward pass for "is the new iterate adversarial?" also serves the next iteration's
  gradient when no point became adversarial (the iterate is then unchanged); the original runs it twice.

Batch compositions differ from the original's, which can change logits by float rounding where a kernel's
blocking depends on the batch size; a result then differs only where the attack sits on a knife edge.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torchattacks.attacks.fab import projection_l2, projection_linf

from advprune.attacks.state import Checkpoint

N_ITER = 100
ALPHA_MAX, ETA, BETA = 0.1, 1.05, 0.9


def _dist(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.reshape(delta.shape[0], -1)
    return flat.abs().max(1)[0] if norm == "Linf" else (flat**2).sum(-1).sqrt()


def single_run(model: nn.Module, im2: torch.Tensor, la2: torch.Tensor, la_target: torch.Tensor, norm: str,
               n_iter: int = N_ITER, checkpoint: Checkpoint | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The original's targeted `attack_single_run` loop on points it classifies correctly; returns (found,
    closest adversarial point found) per point. With `checkpoint`, it can stop and continue between iterations
    (FAB-T draws nothing at random: the iterate, the closest point found and its distance are the whole state;
    a continued run recomputes the iterate's logits, which the same call on the same batch reproduces)."""
    bs, ndims = im2.shape[0], im2.dim() - 1
    u = torch.arange(bs, device=im2.device)
    resumed = checkpoint.resumed if checkpoint is not None else None
    if resumed is None:
        adv, res2, x1, first = im2.clone(), 1e10 * torch.ones([bs], device=im2.device), im2.clone(), 0
    else:
        adv, res2, x1, first = resumed["adv"], resumed["res2"], resumed["x1"], resumed["iteration"]
    x0 = im2.clone().reshape([bs, -1])
    project = projection_linf if norm == "Linf" else projection_l2
    im = logits = None  # the iterate and its logits, with the graph, when the last check can be reused
    for it in range(first, n_iter):
        if im is None:
            im = x1.clone().requires_grad_()
            with torch.enable_grad():
                logits = model(im)
        with torch.enable_grad():
            diffy = -(logits[u, la2] - logits[u, la_target])
            (graddiffy,) = torch.autograd.grad(diffy.sum(), [im])
        df = diffy.detach().unsqueeze(1)
        dg2 = graddiffy.detach()  # the only row of dg: one target, so the closest hyperplane is it
        b = -df[:, 0] + (dg2 * x1).reshape(x1.shape[0], -1).sum(dim=-1)
        w = dg2.reshape([bs, -1])
        d3 = project(torch.cat((x1.reshape([bs, -1]), x0), 0), torch.cat((w, w), 0), torch.cat((b, b), 0))
        d1 = torch.reshape(d3[:bs], x1.shape)
        d2 = torch.reshape(d3[-bs:], x1.shape)
        if norm == "Linf":
            a0 = d3.abs().max(dim=1, keepdim=True)[0].view(-1, *[1] * ndims)
        else:
            a0 = (d3**2).sum(dim=1, keepdim=True).sqrt().view(-1, *[1] * ndims)
        a0 = torch.max(a0, 1e-8 * torch.ones(a0.shape, device=a0.device))
        a1, a2 = a0[:bs], a0[-bs:]
        alpha = torch.min(torch.max(a1 / (a1 + a2), torch.zeros(a1.shape, device=a1.device)), ALPHA_MAX * torch.ones(a1.shape, device=a1.device))
        x1 = ((x1 + ETA * d1) * (1 - alpha) + (im2 + d2 * ETA) * alpha).clamp(0.0, 1.0)

        last = it == n_iter - 1
        im = None if last else x1.clone().requires_grad_()
        with torch.set_grad_enabled(not last):
            logits = model(x1 if last else im)
        is_adv = logits.detach().max(1)[1] != la2
        if is_adv.any():
            im = None  # the iterate moves back towards the input: the next gradient needs a new pass
            ind_adv = is_adv.nonzero().flatten()
            t = _dist(x1[ind_adv] - im2[ind_adv], norm)
            closer = (t < res2[ind_adv]).float().reshape([-1, *[1] * ndims])
            farther = (t >= res2[ind_adv]).float().reshape([-1, *[1] * ndims])
            adv[ind_adv] = x1[ind_adv] * closer + adv[ind_adv] * farther
            res2[ind_adv] = t * (t < res2[ind_adv]).float() + res2[ind_adv] * (t >= res2[ind_adv]).float()
            x1[ind_adv] = im2[ind_adv] + (x1[ind_adv] - im2[ind_adv]) * BETA
        if checkpoint is not None and not last:
            checkpoint.save(lambda: {"iteration": it + 1, "adv": adv, "res2": res2, "x1": x1})
    return res2 < 1e10, adv


@torch.no_grad()
def fab_targeted(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, n_targets: int, max_batch: int,
                 n_iter: int = N_ITER, checkpoint: Checkpoint | None = None) -> torch.Tensor:
    """The original's `FABAttack_PT(targeted=True, n_restarts=1, n_target_classes=n_targets).perturb(x, y)`.
    With `checkpoint`, it can stop and continue between chunks of max_batch runs and between iterations."""
    acc = model(x).max(1)[1] == y
    adv = x.clone()
    idx = acc.nonzero().flatten()
    if not len(idx):
        return adv
    x_sub, y_sub = x[idx], y[idx]
    logits = model(x_sub)
    correct = (logits.max(1)[1] == y_sub).nonzero().flatten()  # the points each target's run attacks
    order = logits.sort(dim=-1)[1]
    n, m = len(correct), n_targets
    im2 = x_sub[correct].repeat(m, *([1] * (x.dim() - 1)))
    resumed = checkpoint.resumed if checkpoint is not None else None
    if resumed is None:
        found, x_found, first = torch.zeros(m * n, dtype=torch.bool, device=x.device), im2.clone(), 0
    else:
        found, x_found, first = resumed["found"], resumed["x_found"], resumed["chunk"]
    if n:
        la2 = y_sub[correct].repeat(m)
        la_target = torch.cat([order[correct, -(k + 2)] for k in range(m)])
        for chunk, lo in enumerate(range(0, m * n, max_batch)):
            if chunk < first:
                continue
            sl = slice(lo, lo + max_batch)
            inner = None
            if checkpoint is not None:
                run = resumed["run"] if resumed is not None and chunk == first else None
                inner = Checkpoint(run, lambda make: checkpoint.save(lambda: {"chunk": chunk, "found": found, "x_found": x_found, "run": make()}))
            found[sl], x_found[sl] = single_run(model, im2[sl], la2[sl], la_target[sl], norm, n_iter, inner)
            if checkpoint is not None:
                checkpoint.save(lambda: {"chunk": chunk + 1, "found": found, "x_found": x_found, "run": None})
    # Each target's result per point: the found adversarial point, else x (the original's adv_c).
    adv_k = x_sub.repeat(m, *([1] * (x.dim() - 1))).view(m, len(idx), *x.shape[1:])
    adv_k[:, correct] = x_found.view(m, n, *x.shape[1:])
    flat = adv_k.reshape(m * len(idx), *x.shape[1:])
    still = torch.cat([model(c).max(1)[1] for c in flat.split(max_batch)]).view(m, len(idx)) == y_sub
    still |= _dist(flat - x_sub.repeat(m, *([1] * (x.dim() - 1))), norm).view(m, len(idx)) > eps
    robust = torch.ones(len(idx), dtype=torch.bool, device=x.device)
    for k in range(m):  # in the original's order: a point keeps the first target that broke it
        hit = robust & ~still[k]
        adv[idx[hit]] = adv_k[k][hit]
        robust &= ~hit
    return adv
