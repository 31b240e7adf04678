"""Pruning methods behind one interface: one file per method, a registry from name to class.

A method is constructed with its hyper-parameters (the config entry minus `method`) and called as
`method.prune(model, sparsity, context) -> PruneResult`. Unstructured methods return masks over the
prunable weights (parameter name -> bool tensor, True = kept); structured methods may return a smaller model.
"""

from __future__ import annotations

import functools
import glob
import importlib
import os
import pkgutil
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

_METHODS: dict[str, type[PruningMethod]] = {}


def register_method(name: str):
    def wrap(cls):
        if name in _METHODS:
            raise ValueError(f"pruning method {name!r} registered twice")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return wrap


def _load_all() -> None:
    """Import every method module: each public module of this package is one method (helpers start with '_');
    imported on first use so that a method's dependencies load only where it runs."""
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


def list_methods() -> list[str]:
    _load_all()
    return sorted(_METHODS)


def build_method(name: str, **options) -> PruningMethod:
    _load_all()
    if name not in _METHODS:
        raise KeyError(f"unknown pruning method {name!r}; known: {', '.join(sorted(_METHODS))}")
    return _METHODS[name](**options)


@dataclass
class PruneContext:
    """What a method may use besides the model: data splits (ArraySplit), the threat model, the
    pretraining objective's settings (`objective`: the pretrain params' `train` dict), the sensitivity table,
    the seed, the device, and where its training phases keep their resume states."""

    train: Any = None
    val: Any = None
    threat_model: dict = field(default_factory=dict)
    objective: dict = field(default_factory=dict)
    sensitivity: Any = None
    include_first_last: bool = True
    seed: int = 0
    device: torch.device = torch.device("cpu")
    resume_prefix: str | None = None  # phase p resumes from f"{resume_prefix}.{p}.state.pt"
    fingerprint: dict = field(default_factory=dict)  # params and code hash: a resume state from other ones is ignored
    fast_path: dict | None = None  # {precision, channels_last} of the training phases (advprune.training.fast)
    budget: dict = field(default_factory=dict)  # phase -> what its fit() spent (advprune.training.curve_budget)

    def build_objective(self, name: str | None = None, **overrides):
        """A training objective with the pretraining's attack and betas; `name` (None = the pretraining
        objective) and `overrides` (attack, trades_beta, mart_beta) replace the pretraining's choices."""
        from advprune.training import build_objective

        cfg = {**self.objective, **{k: v for k, v in overrides.items() if v is not None}}
        return build_objective(name or cfg["objective"], self.threat_model["eps"], cfg["attack"], cfg.get("trades_beta", 6.0), cfg.get("mart_beta", 5.0),
                               cfg.get("eps_ramp_epochs", 0), cfg.get("kappa", 0.0))

    def fit(self, model: nn.Module, objective, settings, phase: str, masks=None, validate_robust: bool = True, **train_options) -> list[dict]:
        """Run one training phase of a method (advprune.training.train) on the train split, resumable after a
        kill under the job's resume prefix; returns its per-epoch curve."""
        from advprune.attacks.pgd import PGD
        from advprune.training import curve_budget, train

        attack = self.objective["attack"]
        val_attack = PGD(self.threat_model["eps"], attack["step_size"], attack["steps"]) if validate_robust else None
        run = functools.partial(train, model, objective, self.train, self.val, settings, self.seed, val_attack=val_attack, masks=masks,
                                fingerprint_extra={**self.fingerprint, "phase": phase}, desc=phase, fast_path=self.fast_path, **train_options)
        if self.resume_prefix:
            curve = run(f"{self.resume_prefix}.{phase}.state.pt")
        else:
            with tempfile.TemporaryDirectory(prefix="advprune-") as scratch:  # library use: the loop still writes epoch states
                curve = run(os.path.join(scratch, f"{phase}.state.pt"))
        self.budget[phase] = {"objective": objective.name, **curve_budget(curve)}
        return curve

    def resume_states(self) -> list[str]:
        """The resume files this job's phases wrote (removed once its outputs exist)."""
        return glob.glob(f"{glob.escape(self.resume_prefix)}.*.state.pt") if self.resume_prefix else []


@dataclass
class PruneResult:
    masks: dict[str, torch.Tensor] | None = None
    model: nn.Module | None = None
    info: dict = field(default_factory=dict)


class PruningMethod(ABC):
    """`structured`: removes whole channels/filters. The class attributes below place a method in the
    Adversarial Pruning benchmark's taxonomy (Piras et al. 2024, taxonomy/taxonomy.json), so that comparisons
    can check which of them two arms share and exports can fill the benchmark's entry: `locality` L (per layer)
    or G (one ranking across layers); `ap_criterion` in the benchmark's vocabulary (LWM lowest weight magnitude,
    SOLWM solver-based LWM, LIS least importance score, HGM highest gradient magnitude, random); `ranking` what
    orders the units (weight_l1, weight_l2, random, learned_score, taylor, ...); `allocation` how the per-layer
    amounts are set (uniform, global, learned, sensitivity); `iterative` prunes in several steps."""

    name = "base"
    structured = False
    locality = "L"
    ap_criterion = "LWM"
    ranking = "weight_l1"
    allocation = "uniform"
    iterative = False

    def taxonomy(self) -> dict:
        return {"structure": "S" if self.structured else "US", "locality": self.locality, "criterion": self.ap_criterion, "ranking": self.ranking,
                "allocation": self.allocation, "schedule": "IT" if self.iterative else "1S"}

    @abstractmethod
    def prune(self, model: nn.Module, sparsity: float, context: PruneContext) -> PruneResult: ...


def masks_from_scores(scores: dict[str, torch.Tensor], sparsity: float, scope: str = "layer") -> dict[str, torch.Tensor]:
    """Keep the highest-scoring weights: per layer exactly round(sparsity * n) zeros ('layer'), or
    round(sparsity * total) zeros across all layers by one global ranking ('global'). Ties are broken by
    index, so counts are exact."""
    if scope == "layer":
        return {name: _keep_top(s.flatten(), round(sparsity * s.numel())).view_as(s) for name, s in scores.items()}
    if scope == "global":
        flat = torch.cat([s.flatten() for s in scores.values()])
        keep = _keep_top(flat, round(sparsity * flat.numel()))
        masks, offset = {}, 0
        for name, s in scores.items():
            masks[name] = keep[offset : offset + s.numel()].view_as(s)
            offset += s.numel()
        return masks
    raise ValueError(f"unknown scope {scope!r} (layer | global)")


def _keep_top(scores: torch.Tensor, n_pruned: int) -> torch.Tensor:
    keep = torch.ones_like(scores, dtype=torch.bool)
    if n_pruned > 0:
        keep[torch.argsort(scores, stable=True)[:n_pruned]] = False
    return keep
