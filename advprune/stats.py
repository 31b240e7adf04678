"""Uncertainty of accuracies measured on a finite set of test points, and comparisons of models.

- :func:`wilson`: the Wilson score interval of one accuracy over n points (better than the normal
  approximation near 0 and 1 and for small n);
- :func:`accuracy_interval`: mean over seeds with a Student-t interval (clipped to [0, 1]) when there are
  several seeds, the Wilson interval of the single seed's points otherwise;
- :func:`mcnemar_exact`: exact McNemar test of two models on the same points (two-sided binomial test on the
  discordant pairs);
- :func:`paired_bootstrap`: the accuracy difference of two models on the same points with a percentile interval
  from resampling the points (the same resample for both models, so their correlation is kept);
- :func:`bootstrap`: the same idea for any statistic of several models' accuracies (findings compare ranges
  and ratios, not only differences). Per-point results (bit strings) give a paired resample of the points;
  without them each accuracy is resampled as an independent binomial, which is wider, never narrower.

Per-point results travel as strings of '0'/'1' (`advprune.evaluation.to_bits`, :func:`from_bits`): one character per
evaluated point, in the split's order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _scipy

CONFIDENCE = 0.95
N_BOOTSTRAP = 4000  # percentile-interval ends move by well under 0.5 points between seeds at this count
BOOTSTRAP_SEED = 0  # fixed: the same tables give the same intervals


def from_bits(bits: str) -> np.ndarray:
    if set(bits) - {"0", "1"}:
        raise ValueError(f"per-point results must be a string of 0 and 1, got {bits[:20]!r}...")
    return np.frombuffer(bits.encode("ascii"), dtype=np.uint8) == ord("1")


def _z(confidence: float) -> float:
    return float(_scipy.norm.ppf(0.5 + confidence / 2))


def wilson(k: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (k may be a rounded accuracy * n)."""
    if n <= 0:
        return math.nan, math.nan
    z = _z(confidence)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Mean and Student-t interval of the mean of `values` (NaN ends for fewer than two values)."""
    v = np.asarray(values, dtype=float)
    mean = float(v.mean()) if len(v) else math.nan
    if len(v) < 2:
        return mean, math.nan, math.nan
    half = float(_scipy.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return mean, mean - half, mean + half


@dataclass(frozen=True)
class Interval:
    mean: float
    lo: float
    hi: float
    basis: str  # "wilson" (one seed, over its points), "t" (over seeds) or "none"


def accuracy_interval(accuracies: Sequence[float], n_examples: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean accuracy over seeds with its interval: Student-t over the seeds when there are several, else the
    Wilson interval over the one seed's points. NaN accuracies (not computed) are left out; none left: NaN."""
    acc, n = np.asarray(accuracies, dtype=float), np.asarray(n_examples, dtype=float)
    keep = ~np.isnan(acc)
    acc, n = acc[keep], n[keep]
    if len(acc) == 0:
        return Interval(math.nan, math.nan, math.nan, "none")
    if len(acc) >= 2:
        mean, lo, hi = t_interval(acc, confidence)
        # an accuracy lies in [0, 1]; with two or three seeds the t-interval alone often leaves it
        return Interval(mean, max(lo, 0.0), min(hi, 1.0), "t")
    if np.isnan(n[0]) or n[0] <= 0:
        return Interval(float(acc[0]), math.nan, math.nan, "none")
    lo, hi = wilson(round(acc[0] * n[0]), int(n[0]), confidence)
    return Interval(float(acc[0]), lo, hi, "wilson")


@dataclass(frozen=True)
class McNemar:
    only_a: int  # points model A gets right and B wrong
    only_b: int
    p_value: float


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> McNemar:
    """Exact two-sided McNemar test: under "A and B are equally accurate" each discordant point is A's with
    probability 1/2. p = 1 when there are no discordant points."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired results need the same points: {a.shape} vs {b.shape}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = only_a + only_b
    p = 1.0 if n == 0 else float(_scipy.binomtest(only_a, n, 0.5).pvalue)
    return McNemar(only_a, only_b, p)


@dataclass(frozen=True)
class Estimate:
    value: float
    lo: float
    hi: float
    paired: bool  # the interval comes from resampling shared points (else: independent binomials)
    nonfinite: int = 0  # bootstrap samples where the statistic was undefined or infinite (kept, see _percentiles)
    n_samples: int = 0


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[float, float, int]:
    """Percentile interval of the bootstrap samples, and how many were not finite. None is dropped: an infinite
    sample (x / 0) stays at its end, an undefined one (0 / 0) counts as beyond whichever end is being read, so
    the interval can only widen; with too many of them it reaches infinity and no threshold is decided."""
    samples = np.asarray(samples, dtype=float).reshape(-1)
    if not len(samples):
        return math.nan, math.nan, 0
    undefined = np.isnan(samples)
    lo = np.percentile(np.where(undefined, -np.inf, samples), 50 * (1 - confidence), method="inverted_cdf")
    hi = np.percentile(np.where(undefined, np.inf, samples), 50 * (1 + confidence), method="inverted_cdf")
    return float(lo), float(hi), int((~np.isfinite(samples)).sum())


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED,
                     confidence: float = CONFIDENCE) -> Estimate:
    """acc(A) - acc(B) on the same points, with the percentile interval of the points resampled jointly."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired results need the same points: {a.shape} vs {b.shape}")
    idx = np.random.default_rng(seed).integers(0, len(a), size=(n_boot, len(a)))
    diffs = (a - b)[idx].mean(axis=1)
    return Estimate(float(a.mean() - b.mean()), *_percentiles(diffs, confidence)[:2], True, n_samples=n_boot)


@dataclass
class Model:
    """One model's evaluations, one entry per seed in a common seed order: accuracy, number of points, and the
    per-point results (None where the record has none)."""
    acc: list[float]
    n: list[int]
    bits: list[np.ndarray | None]


def _shares_points(models: Mapping[str, Model]) -> bool:
    lengths = {len(b) for m in models.values() for b in m.bits if b is not None}
    return all(b is not None for m in models.values() for b in m.bits) and len(lengths) == 1


def bootstrap(models: Mapping[str, Model], statistic: Callable[[dict[str, np.ndarray]], np.ndarray],
              n_boot: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE) -> Estimate:
    """`statistic(acc)`, where acc[name] is an array (replicates, seeds) of accuracies, returns one value per
    replicate; the estimate is its value on the measured accuracies and a percentile interval.

    Paired when every model has per-point results of the same length (models evaluated on the same points):
    each replicate resamples the points once for all models. Otherwise each (model, seed) accuracy is drawn
    from its own binomial. With several seeds each replicate also resamples the seeds (the same ones for all
    models: a seed's models share their pretrained network)."""
    names = list(models)
    n_seeds = {len(models[k].acc) for k in names}
    if len(n_seeds) != 1:
        raise ValueError("every model needs the same seeds")
    (n_seeds,) = n_seeds
    rng = np.random.default_rng(seed)
    paired = _shares_points(models)
    if paired:
        n_points = len(models[names[0]].bits[0])
        idx = rng.integers(0, n_points, size=(n_boot, n_points))
        acc = {k: np.stack([b[idx].mean(axis=1) for b in models[k].bits], axis=1) for k in names}
    else:
        acc = {k: np.stack([rng.binomial(int(n), min(max(a, 0.0), 1.0), size=n_boot) / n if n > 0 else np.full(n_boot, np.nan)
                            for a, n in zip(models[k].acc, models[k].n)], axis=1) for k in names}
    if n_seeds > 1:
        seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
        acc = {k: np.take_along_axis(v, seeds, axis=1) for k, v in acc.items()}
    with np.errstate(divide="ignore", invalid="ignore"):
        samples = np.asarray(statistic(acc), dtype=float)
        observed = statistic({k: np.asarray(models[k].acc, dtype=float)[None, :] for k in names})
        value = float(np.asarray(observed, dtype=float).reshape(-1)[0])
    lo, hi, nonfinite = _percentiles(samples, confidence)
    return Estimate(value, lo, hi, paired, nonfinite, n_boot)
