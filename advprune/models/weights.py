"""Weight inspection: which weights count as prunable, and how much of each such layer a model no longer has.
Read by pruning, sensitivity, evaluation, identity checks and export alike, so it sits beside the models, below
all of them (a change here re-runs what inspects weights, not what prunes)."""

from __future__ import annotations

import torch.nn as nn


def prunable_weights(model: nn.Module, include_first_last: bool = True) -> dict[str, nn.Parameter]:
    """Weights of every Conv2d and Linear layer in network order (parameter name -> tensor);
    `include_first_last=False` leaves the first and the last such layer dense."""
    weights = {f"{name}.weight": m.weight for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    if not include_first_last:
        names = list(weights)
        weights = {k: weights[k] for k in names[1:-1]}
    return weights


def layer_sparsity(model: nn.Module, include_first_last: bool = True, dense: nn.Module | None = None) -> list[dict]:
    """Per prunable layer of the dense architecture (network order): its dense size and the fraction of it that
    `model` no longer has, 1 - nonzero weights left / dense size, measured from the weights themselves.
    Channels removed by structured pruning and weights zeroed by a mask count alike; `dense` (the full-width
    network of the same architecture) defaults to the model itself."""
    weights = dict(model.named_parameters())
    rows = []
    for i, (name, w) in enumerate(prunable_weights(model if dense is None else dense, include_first_last).items()):
        left = int((weights[name] != 0).sum())
        rows.append({"layer": name.removesuffix(".weight"), "layer_index": i, "n_params": w.numel(), "sparsity": (w.numel() - left) / w.numel()})
    return rows
