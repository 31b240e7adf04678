"""Square Attack (Andriushchenko et al., ECCV 2020), Linf, as AutoAttack's standard version runs it: 5000
queries, p_init .8, one restart, margin loss, the unrescaled p schedule.

Written after the original (github.com/fra31/auto-attack, `square.py`), with the same draws from torch's
global CPU generator in the same order (the initial stripes, then per query the window's corner and the
per-channel signs), so a call returns what the original's `perturb` returns for the same seed. It only drops
work whose result the original never uses: the cross-entropy it computes next to the margin, the query
counter, and per-query host syncs beyond the one that decides to stop. Each query still evaluates the model
on exactly the points the original evaluates, so every logit is the same.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from advprune.attacks.state import Checkpoint

N_QUERIES = 5000
P_INIT = 0.8


def p_selection(it: int) -> float:
    """The original's schedule of the window's share of the image, not rescaled to n_queries."""
    for bound, divisor in [(10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256)]:
        if it <= bound:
            return P_INIT / divisor
    return P_INIT / 512


def _random_sign(shape) -> torch.Tensor:
    return torch.sign(2 * torch.rand(shape) - 1)


def _random_int(low: int, high: int) -> int:
    return int((low + (high - low) * torch.rand([1])).long())


def _margin(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    u = torch.arange(x.shape[0], device=x.device)
    y_corr = logits[u, y].clone()
    logits[u, y] = -float("inf")
    return y_corr - logits.max(dim=-1)[0]


def single_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, n_queries: int = N_QUERIES,
               checkpoint: Checkpoint | None = None) -> torch.Tensor:
    """With `checkpoint`, it can stop and continue between queries: the best points, their margins and the
    generator's state, from which the next query's window and signs are drawn."""
    c, h, w = x.shape[1:]
    n_features = c * h * w
    resumed = checkpoint.resumed if checkpoint is not None else None
    if resumed is None:
        x_best = torch.clamp(x + eps * _random_sign([x.shape[0], c, 1, w]).to(x.device), 0.0, 1.0)
        margin_min = _margin(model, x_best, y)
        loss_min = margin_min.clone()  # the margin loss: the loss is the margin
        if (margin_min < 0.0).all():
            return x_best
        first = 0
    else:
        x_best, margin_min, loss_min, first = resumed["x_best"], resumed["margin_min"], resumed["loss_min"], resumed["query"]
        torch.set_rng_state(resumed["rng"])
    for i_iter in range(first, n_queries):
        idx = (margin_min > 0.0).nonzero().flatten()
        x_curr, x_best_curr, y_curr = x[idx], x_best[idx], y[idx]
        margin_min_curr, loss_min_curr = margin_min[idx], loss_min[idx]
        p = p_selection(i_iter)
        s = min(max(int(round(math.sqrt(p * n_features / c))), 1), min(h, w))
        vh = _random_int(0, h - s)
        vw = _random_int(0, w - s)
        new_deltas = torch.zeros([c, h, w], device=x.device)
        new_deltas[:, vh : vh + s, vw : vw + s] = 2.0 * eps * _random_sign([c, 1, 1]).to(x.device)
        x_new = torch.clamp(torch.min(torch.max(x_best_curr + new_deltas, x_curr - eps), x_curr + eps), 0.0, 1.0)

        margin = _margin(model, x_new, y_curr)
        # The original blends with 0/1 floats (a * new + (1 - a) * old); for finite values that selects exactly.
        improved = margin < loss_min_curr
        loss_min[idx] = torch.where(improved, margin, loss_min_curr)
        improved |= margin <= 0.0
        margin_min[idx] = torch.where(improved, margin, margin_min_curr)
        x_best[idx] = torch.where(improved.view(-1, 1, 1, 1), x_new, x_best_curr)
        if (margin_min <= 0.0).all():  # the original stops once every point is misclassified
            break
        if checkpoint is not None:
            checkpoint.save(lambda: {"query": i_iter + 1, "x_best": x_best, "margin_min": margin_min, "loss_min": loss_min,
                                     "rng": torch.get_rng_state()})
    return x_best


@torch.no_grad()
def square_linf(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int, n_queries: int = N_QUERIES,
                checkpoint: Checkpoint | None = None) -> torch.Tensor:
    """The original's `SquareAttack(norm='Linf', n_queries=5000, p_init=.8, n_restarts=1, loss='margin',
    resc_schedule=False).perturb(x, y)`; with `checkpoint`, resumable between queries."""
    acc = model(x).max(1)[1] == y
    adv = x.clone()
    torch.manual_seed(seed)
    idx = acc.nonzero().flatten()
    if len(idx):
        x_sub, y_sub = x[idx], y[idx]
        adv_sub = single_run(model, x_sub, y_sub, eps, n_queries, checkpoint)
        fooled = model(adv_sub).max(1)[1] != y_sub
        adv[idx[fooled]] = adv_sub[fooled]
    return adv
