"""Least weight magnitude (LWM): prune the weights of smallest |w|, per layer or by one global ranking.

The pruning criterion of Sehwag et al. 2019 ("Towards Compact and Robust DNNs") and the LWM baseline of
HYDRA; robustness comes from the objective of the pretraining and fine-tuning around it, not the criterion.
"""

from advprune.pruning import PruneResult, PruningMethod, masks_from_scores, prunable_weights, register_method


@register_method("lwm")
class LWM(PruningMethod):
    def __init__(self, scope: str = "layer"):
        if scope not in ("layer", "global"):
            raise ValueError(f"lwm: scope must be 'layer' or 'global', not {scope!r}")
        self.scope = scope

    def prune(self, model, sparsity, context):
        weights = prunable_weights(model, context.include_first_last)
        masks = masks_from_scores({n: w.detach().abs() for n, w in weights.items()}, sparsity, self.scope)
        return PruneResult(masks=masks, info={"scope": self.scope})
