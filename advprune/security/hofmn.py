"""HO-FMN (Mura et al. 2024, pralab/HO-FMN) the way the Adversarial Pruning benchmark runs it
(pralab/AdversarialPruningBenchmark, utils/test.py `test_model_hofmn`): FMN with DLR loss, SGD and cosine
annealing (`advprune.security.fmn`); SGD's lr, momentum, weight decay and dampening tuned over `trials` trials
of `tune_steps` steps on a batch of `tune_batch` points, each trial scored by the median distance over that batch,
the smallest score kept; then `steps` steps of the tuned FMN, its cosine schedule stretched over them, on the
evaluated points. Robust accuracy at ε is the share of points whose distance exceeds ε; the distances give it at
every ε (the security curve).

The search space is HO-FMN's for SGD (src/ho_fmn/search_space.py): lr log-uniform in [8/255, 10], momentum in
[0, 0.9], weight decay in [0.01, 1], dampening in [0, 0.2]. What differs from the benchmark, and why:
- Tuning points: the first `tune_batch` points of the **validation** split (all of it when smaller), never test
  points (this project's rule). The benchmark tunes on the test set: every trial draws `next(iter(loader))` from
  an unshuffled test loader, so in effect all its trials see test points 0-63 (its attack then skips points
  0-2047, believing the trials saw 32 different batches). Ours see one batch too, on purpose: the trial with the
  best score is kept, and scores on different batches would compare batches rather than parameters.
- Tuner: the trials are the first `trials` points of a scrambled Sobol sequence (scipy.stats.qmc, seeded by
  `seed`) over the same space, and the trial with the smallest score is kept (ties: the earlier). The benchmark
  uses Ax (ax-platform 0.4.0): Sobol for its first trials, then Bayesian optimisation with a Gaussian process
  (BoTorch), the best arm chosen by the model. Ax would add BoTorch, GPyTorch and Ax's plotting and storage
  stack to the pinned environment for 32 trials; a seeded quasi-random search of the same space with the same
  budget is deterministic (same seed, same parameters, same distances) and needs only scipy, already pinned.
- Trial score: the median over the batch's correctly classified points. The benchmark takes the median over all
  of them with the misclassified ones (distance 0) counted as inf, so once half the batch is misclassified (a
  heavily pruned model) every trial scores inf and the tuning chooses nothing.
- Evaluated points: every evaluated point (evaluate.split and n_examples, as the other attacks), not the 128
  test points 2048-2175 the benchmark attacks.
- A point FMN finds no adversarial example for has distance inf, not 0 (`advprune.security.fmn`).
"""

from __future__ import annotations

import logging
import math
import time

import torch
import torch.nn as nn

from .fmn import FMNParams, fmn

log = logging.getLogger(__name__)

# HO-FMN's SGD search space: name -> (low, high, log scale).
SEARCH_SPACE = {"lr": (8 / 255, 10.0, True), "momentum": (0.0, 0.9, False), "weight_decay": (0.01, 1.0, False), "dampening": (0.0, 0.2, False)}


def candidates(trials: int, seed: int) -> list[FMNParams]:
    """The first `trials` points of a scrambled Sobol sequence over SEARCH_SPACE (a prefix of a power-of-2 draw,
    which keeps the sequence's balance and scipy quiet)."""
    from scipy.stats import qmc  # only when tuning: scipy.stats takes ~0.7 s to import

    unit = qmc.Sobol(d=len(SEARCH_SPACE), scramble=True, seed=seed).random_base2(max(0, math.ceil(math.log2(trials))))[:trials]
    params = []
    for row in unit:
        values = {}
        for u, (name, (low, high, log_scale)) in zip(row, SEARCH_SPACE.items()):
            values[name] = float(math.exp(math.log(low) + u * (math.log(high) - math.log(low))) if log_scale else low + u * (high - low))
        params.append(FMNParams(**values))
    return params


def score(distances: torch.Tensor) -> float:
    """A trial's objective: the median distance of the points classified correctly (distance > 0; inf where FMN
    found nothing; torch's median: the lower middle value); inf when there are none."""
    correct = distances[distances > 0]
    return float(correct.median()) if len(correct) else math.inf


def tune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, trials: int, steps: int, seed: int, batch_size: int) -> tuple[FMNParams, list[dict]]:
    """The best of `trials` candidate parameter sets, each run for `steps` FMN steps on (x, y), and every trial
    with its score (in trial order)."""
    history = []
    for params in candidates(trials, seed):
        distances, _ = fmn(model, x, y, steps, params, batch_size)
        history.append({"params": vars(params), "score": score(distances)})
    best = min(range(len(history)), key=lambda i: history[i]["score"])  # min keeps the first of equal scores
    return FMNParams(**history[best]["params"]), history


def record_fields(model: nn.Module, split, val_split, eps: float, settings: dict | None, batch_size: int, fold_batchnorm: bool = True
                  ) -> tuple[dict, torch.Tensor | None]:
    """The evaluation record's HO-FMN fields for `split` (the evaluated points) and which points are robust at
    `eps` (None when off). FMN runs on the attack view of the eval-mode `model`, as every other attack of the
    record (`advprune.models.view`); `val_split`: the validation split the parameters are tuned on; `settings`:
    the config's evaluate.hofmn ({steps, trials, tune_steps, tune_batch, seed}; None = off). `hofmn_distances`
    lists the distances in the split's order, null where FMN found no adversarial example (robust at every ε;
    JSON has no inf); `hofmn` holds the tuned parameters, every trial with its score and the seconds spent."""
    if not settings:
        log.warning("HO-FMN not computed: evaluate.hofmn is null")
        return {"hofmn_acc": None, "hofmn_distances": None, "hofmn": {"status": "not computed", "reason": "evaluate.hofmn is null"}}, None
    from advprune.models.view import AttackView

    model = AttackView(model.eval(), fold_batchnorm).refresh()
    started = time.time()
    n_tune = min(settings["tune_batch"], len(val_split.y))
    x_val, y_val = val_split.float_x()[:n_tune], val_split.y[:n_tune]
    params, trials = tune(model, x_val, y_val, settings["trials"], settings["tune_steps"], settings["seed"], batch_size)
    tuned = time.time() - started
    started = time.time()
    distances, _ = fmn(model, split.float_x(), split.y, settings["steps"], params, batch_size)
    seconds = {"tune": tuned, "attack": time.time() - started}
    robust = distances.double() > eps  # in float64, as the report compares the recorded distances
    acc = float(robust.float().mean())
    log.info("HO-FMN %.4f at eps %g (tuned lr %.4g, momentum %.3f, weight decay %.3f, dampening %.3f on %d validation points; %.1fs + %.1fs)",
             acc, eps, params.lr, params.momentum, params.weight_decay, params.dampening, n_tune, seconds["tune"], seconds["attack"])
    fields = {
        "hofmn_acc": acc,
        "hofmn_distances": [None if math.isinf(d) else d for d in distances.tolist()],
        "hofmn": {"status": "computed", "params": vars(params), "tuning_split": "val", "tuning_points": n_tune,
                  "trials": [{**t, "score": None if math.isinf(t["score"]) else t["score"]} for t in trials],  # null: inf
                  "seconds": {**seconds, "total": sum(seconds.values())}, "settings": dict(settings)},
    }
    return fields, robust

