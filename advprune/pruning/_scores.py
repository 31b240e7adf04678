"""Pieces shared by the score-based methods (HYDRA, HARP): the scaled score init, and a phase that trains
parametrizations attached to frozen weights."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
from torch.nn.utils import parametrize


def scaled_scores(values: torch.Tensor, fan_in: int) -> torch.Tensor:
    """HYDRA's scaled score init (official initialize_scaled_score): sqrt(6 / fan_in) * values / max|values|,
    the Kaiming-uniform range, so the initial top-k mask is the magnitude (LWM) mask."""
    return math.sqrt(6 / fan_in) * values / values.abs().max().clamp_min(torch.finfo(values.dtype).tiny)


class WeightParametrizations:
    """The phase's handle: attaches parametrizations to weights (remembered, so that they are removed again) and
    lists the BatchNorm affine parameters that train beside them."""

    def __init__(self, batchnorm: list[nn.Parameter]):
        self.batchnorm = batchnorm
        self.modules: list[nn.Module] = []

    def attach(self, module: nn.Module, parametrization: nn.Module) -> None:
        parametrize.register_parametrization(module, "weight", parametrization)
        self.modules.append(module)


@contextmanager
def frozen_weights(model: nn.Module, freeze_bn: bool) -> Iterator[WeightParametrizations]:
    """Freeze every parameter but BatchNorm's affine ones (those too with `freeze_bn`); yields the handle to attach
    weight parametrizations with. Afterwards the model has its plain layers, original weight tensors and
    requires_grad flags back, whatever happened inside (trained BatchNorm parameters and statistics stay)."""
    trainable = {p: p.requires_grad for p in model.parameters()}
    phase = WeightParametrizations([])
    try:
        for m in model.modules():
            train_affine = isinstance(m, nn.modules.batchnorm._BatchNorm) and not freeze_bn
            for p in m.parameters(recurse=False):
                p.requires_grad_(train_affine)
                if train_affine:
                    phase.batchnorm.append(p)
        yield phase
    finally:
        for module in phase.modules:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        for p, flag in trainable.items():
            p.requires_grad_(flag)
