"""Adversarial and certified training: objectives (PGD-AT, TRADES, MART, natural, IBP, CROWN-IBP) and the resumable epoch loop."""

from advprune.attacks.pgd import PGD
from advprune.training.losses import OBJECTIVES, Objective, build_objective
from advprune.training.fast import FastPath
from advprune.training.trainer import TrainSettings, apply_masks, curve_budget, train, training_step

LOOP_OPTIONS = ("batchnorm", "keep", "epoch_steps")  # the loop options a params dict carries when a config sets them

__all__ = ["OBJECTIVES", "FastPath", "TrainSettings", "apply_masks", "build_objective", "curve_budget", "from_params", "train", "training_step"]


def from_params(cfg: dict, eps: float) -> tuple[Objective, TrainSettings, PGD]:
    """The objective, loop settings and per-epoch validation attack of a `pretrain`/`finetune` params dict."""
    objective = build_objective(cfg["objective"], eps, cfg["attack"], cfg.get("trades_beta", 6.0), cfg.get("mart_beta", 5.0),
                                cfg.get("eps_ramp_epochs", 0), cfg.get("kappa", 0.0))
    settings = TrainSettings(**{k: cfg[k] for k in ("epochs", "batch_size", "lr", "momentum", "weight_decay", "schedule")},
                             **{k: cfg[k] for k in LOOP_OPTIONS if k in cfg})
    return objective, settings, PGD(eps, cfg["attack"]["step_size"], cfg["attack"]["steps"])
