"""Adversarial training: objectives (PGD-AT, TRADES, MART, natural) and the resumable epoch loop."""

from advprune.training.losses import OBJECTIVES, build_objective
from advprune.training.trainer import TrainSettings, apply_masks, train

__all__ = ["OBJECTIVES", "TrainSettings", "apply_masks", "build_objective", "train"]
