"""L1-filter pruning (Li et al. 2017, "Pruning Filters for Efficient ConvNets"): remove the filters with the
smallest sum of absolute kernel weights, the same ratio in every layer, physically (a smaller network).

The uniform ratio is the one that removes the target fraction of prunable weights (`measure: params`, the
pipeline's sparsity) or of multiply-accumulates (`measure: flops`), found by bisection over whole channels
(`ratios_for_budget`), capped at `max_ratio` per group. A channel group couples the filters of every conv that
writes into the same channels (residual connections, see advprune/pruning/_structured.py); its L1 score is
the sum over those filters. Filters of one group are ranked once on the dense weights (Li et al.'s
"independent" strategy), not re-scored after each removal.

`criterion` swaps the ranking and keeps everything else (granularity, uniform allocation, one shot), so that
criteria can be compared alone ("Beyond Pruning Criteria"): l1 (Li et al.), l2, taylor (|w * dL/dw| summed over
a filter, dL/dw of the pretraining objective's adversarial loss over `taylor_batches` training batches, as MRPF's
taylor), or random (the sanity baseline, not a criterion: its `ranking` is "random").

Deviations from the paper: Li et al. hand-pick per-layer ratios from a sensitivity analysis and, in ResNets,
prune only the first conv of each block (the residual channels stay); this baseline prunes every channel
group, residual ones included, at one uniform ratio (the "uniform structured baseline"). Retraining is the
pipeline's fine-tuning stage.

Convergence (info["convergence"], `allocation_report`): one shot, no schedule; it converged when the budget was
met to within a point (at 99 % of a narrow network whole channels and `max_ratio` may not allow it), and it names
the groups that `max_ratio` capped.
"""

import torch

from advprune.models.weights import prunable_weights
from advprune.pruning import PruneResult, PruningMethod, register_method
from advprune.pruning._structured import (
    CRITERIA,
    MEASURES,
    allocation_report,
    channel_groups,
    channel_importance,
    keep_for_ratios,
    ratios_for_budget,
    remove_channels,
    structured_cost,
    taylor_grads,
)

# (benchmark criterion, ranking) per criterion: the taxonomy the findings table compares arms by
TAXONOMY = {"l1": ("LWM", "weight_l1"), "l2": ("LWM", "weight_l2"), "taylor": ("HGM", "taylor"), "random": ("random", "random")}


@register_method("l1_filter")
class L1Filter(PruningMethod):
    structured = True
    allocation = "uniform"

    def __init__(self, criterion: str = "l1", measure: str = "params", max_ratio: float = 0.95, taylor_batches: int = 8):
        if criterion not in CRITERIA:
            raise ValueError(f"l1_filter: criterion must be one of {', '.join(CRITERIA)}, not {criterion!r}")
        if measure not in MEASURES:
            raise ValueError(f"l1_filter: measure must be one of {', '.join(MEASURES)}, not {measure!r}")
        if not 0.0 < max_ratio < 1.0:
            raise ValueError(f"l1_filter: max_ratio must be in (0, 1), not {max_ratio!r}")
        if not isinstance(taylor_batches, int) or taylor_batches < 1:
            raise ValueError(f"l1_filter: taylor_batches must be an integer >= 1, not {taylor_batches!r}")
        self.criterion, self.measure, self.max_ratio, self.taylor_batches = criterion, measure, max_ratio, taylor_batches
        self.ap_criterion, self.ranking = TAXONOMY[criterion]

    def prune(self, model, sparsity, context):
        example = torch.zeros(1, *context.train.x.shape[1:], device=context.device)
        groups = channel_groups(model, example, context.include_first_last)
        counted = [name.removesuffix(".weight") for name in prunable_weights(model, context.include_first_last)]
        allocation = ratios_for_budget(model, example, groups, dict.fromkeys((g.name for g in groups), 1.0), sparsity, self.measure,
                                       max_ratio=self.max_ratio, counted_layers=counted)
        importance = channel_importance(model, groups, self.criterion, generator=torch.Generator().manual_seed(context.seed),
                                        grads=taylor_grads(model, context, self.taylor_batches) if self.criterion == "taylor" else None)
        keep = keep_for_ratios(groups, importance, allocation.ratios)
        small = remove_channels(model, example, keep)
        dense_cost, small_cost = structured_cost(model, example), structured_cost(small, example)
        return PruneResult(model=small, info={
            "criterion": self.criterion,
            "measure": self.measure,
            "ratios": allocation.ratios,
            "channels": {g.name: [int(keep[g.name].sum()), g.n_channels] for g in groups},
            "reduction": allocation.reduction,
            "reduction_all_layers": {m: 1.0 - small_cost[m] / dense_cost[m] for m in MEASURES},
            "convergence": allocation_report(allocation, sparsity, self.measure, {g.name: {"upper": "max_ratio"} for g in groups}),
        })
