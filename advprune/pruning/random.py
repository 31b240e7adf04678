"""Random pruning: the sanity baseline every criterion must beat (same per-layer counts as layer-wise LWM)."""

import torch

from advprune.models.weights import prunable_weights
from advprune.pruning import PruneResult, PruningMethod, masks_from_scores, register_method


@register_method("random")
class RandomPruning(PruningMethod):
    ap_criterion = ranking = "random"

    def prune(self, model, sparsity, context):
        generator = torch.Generator().manual_seed(context.seed)
        weights = prunable_weights(model, context.include_first_last)
        scores = {n: torch.rand(w.shape, generator=generator) for n, w in weights.items()}
        return PruneResult(masks=masks_from_scores(scores, sparsity, "layer"))
