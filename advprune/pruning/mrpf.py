"""MRPF, Module Robust Pruning and Fine-tuning (Bai, Tabia, Santos-Rodríguez, arXiv 2410.15176): structured
pruning whose per-layer ratios follow each module's robustness sensitivity, then adversarial fine-tuning.

What the paper states (abstracts): a "Module Robustness Sensitivity" (MRS) quantifies each layer's sensitivity
to adversarial perturbations and sets that layer's pruning ratio (more sensitive, less pruned); filters are
ranked by an ordinary criterion (the paper finds the criterion matters little next to fine-tuning); the pruned
network is adversarially fine-tuned (TRADES). No code is public and the exact MRS formula and its mapping to
ratios could not be read, so this is the definition implemented here:

1. Module sensitivity S_l: the sensitivity stage's table (advprune/sensitivity.py, column `sensitivity` per
   `module`), RiFT's module robust criticality: the largest rise of the adversarial loss when the weights of
   module l alone move within a relative L2 ball of radius rho.
2. MRS of a channel group g (advprune/pruning/_structured.py: coupled output channels) is the largest S_l over
   the modules whose filters write those channels (`ChannelGroup.outputs`: one conv for a plain layer; every
   conv adding into a residual stream): a channel is as fragile as its most sensitive writer, and these are the
   weights that removing the channel deletes (the criterion ranks the same filters).
3. Ratios inversely related to MRS, with the budget met by bisection (the mapping proposed in
   shared/reference/methods.md §6.2):

       p_g = clamp(c * (MRS_g / mean_h MRS_h + eps) ** (-sensitivity_power), min_ratio, max_ratio)

   with c chosen by bisection (`ratios_for_budget`) so that the removed fraction of the prunable weights
   (`measure: params`, the pipeline's sparsity) or of their multiply-accumulates (`measure: flops`) equals the
   target as closely as whole channels allow. Dividing by the mean makes the weights independent of the loss
   scale; eps keeps a group of zero sensitivity finite (it then takes max_ratio); sensitivity_power 0 gives
   uniform ratios, larger powers spread them further.
4. In each group the round(p_g * n) channels lowest by `criterion` go (l1 / l2 over the group's filters,
   random, or taylor: |w * dL/dw| with L the pretraining objective's adversarial loss over `taylor_batches`
   training batches), physically (a smaller network).
5. Fine-tuning is the pipeline's finetune stage (recommended objective: TRADES, beta 6, as in the paper).

When the target cannot be met within max_ratio and whole channels, the closest ratios are used, a warning is
logged and info["reduction"] says what was reached.
"""

import copy
import logging

import torch

from advprune.pruning import PruneResult, PruningMethod, prunable_weights, register_method
from advprune.pruning._structured import (
    CRITERIA, MEASURES, layer_costs, channel_groups, channel_importance, keep_for_ratios, ratios_for_budget, remove_channels, structured_cost,
)

log = logging.getLogger(__name__)


@register_method("mrpf")
class MRPF(PruningMethod):
    structured = True
    allocation = "sensitivity"

    def __init__(self, criterion: str = "l1", measure: str = "params", min_ratio: float = 0.0, max_ratio: float = 0.95,
                 sensitivity_power: float = 1.0, eps: float = 1e-3, taylor_batches: int = 8):
        if criterion not in CRITERIA:
            raise ValueError(f"mrpf: criterion must be one of {', '.join(CRITERIA)}, not {criterion!r}")
        if measure not in MEASURES:
            raise ValueError(f"mrpf: measure must be one of {', '.join(MEASURES)}, not {measure!r}")
        if not 0.0 <= min_ratio <= max_ratio < 1.0:
            raise ValueError(f"mrpf: need 0 <= min_ratio <= max_ratio < 1, got {min_ratio!r}, {max_ratio!r}")
        if not sensitivity_power >= 0:
            raise ValueError(f"mrpf: sensitivity_power must be >= 0, not {sensitivity_power!r}")
        if not eps > 0:
            raise ValueError(f"mrpf: eps must be > 0, not {eps!r}")
        if not isinstance(taylor_batches, int) or taylor_batches < 1:
            raise ValueError(f"mrpf: taylor_batches must be an integer >= 1, not {taylor_batches!r}")
        self.criterion, self.measure, self.min_ratio, self.max_ratio = criterion, measure, min_ratio, max_ratio
        self.ap_criterion, self.ranking = {"random": ("random", "random"), "taylor": ("HGM", "taylor")}.get(criterion, ("LWM", f"weight_{criterion}"))
        self.sensitivity_power, self.eps, self.taylor_batches = sensitivity_power, eps, taylor_batches

    def prune(self, model, sparsity, context):
        if context.sensitivity is None:
            raise ValueError("mrpf: needs the sensitivity table (context.sensitivity), from the sensitivity stage")
        example = torch.zeros(1, *context.train.x.shape[1:], device=context.device)
        groups = channel_groups(model, example, context.include_first_last)
        mrs = group_sensitivity(groups, context.sensitivity)
        weights = self.ratio_weights(mrs)
        counted = [name.removesuffix(".weight") for name in prunable_weights(model, context.include_first_last)]
        ratios = ratios_for_budget(model, example, groups, weights, sparsity, self.measure, self.min_ratio, self.max_ratio, counted_layers=counted)
        importance = channel_importance(model, groups, self.criterion, generator=torch.Generator().manual_seed(context.seed),
                                        grads=self._taylor_grads(model, context) if self.criterion == "taylor" else None)
        keep = keep_for_ratios(groups, importance, ratios)
        small = remove_channels(model, example, keep)

        dense_cost, small_cost = structured_cost(model, example), structured_cost(small, example)
        reduction = 1.0 - _counted_cost(small, example, counted, self.measure) / _counted_cost(model, example, counted, self.measure)
        if abs(reduction - sparsity) > 0.01:
            log.warning("mrpf: removed %.4f of the prunable %s for a target of %.4f (max_ratio %.2f and whole channels allow no closer)",
                        reduction, self.measure, sparsity, self.max_ratio)
        return PruneResult(model=small, info={
            "criterion": self.criterion,
            "measure": self.measure,
            "sensitivity": mrs,
            "ratios": ratios,
            "channels": {g.name: [int(keep[g.name].sum()), g.n_channels] for g in groups},
            "reduction": reduction,
            "reduction_all_layers": {m: 1.0 - small_cost[m] / dense_cost[m] for m in MEASURES},
        })

    def ratio_weights(self, mrs: dict[str, float]) -> dict[str, float]:
        """(MRS_g / mean MRS + eps) ** -sensitivity_power: the ratio of group g is proportional to this."""
        mean = sum(mrs.values()) / len(mrs)
        return {g: (s / mean + self.eps if mean > 0 else 1.0) ** -self.sensitivity_power for g, s in mrs.items()}

    def _taylor_grads(self, model, context) -> dict[str, torch.Tensor]:
        """dL/dw of the pretraining objective's mean loss over the first `taylor_batches` shuffled training batches,
        on a copy (the objective runs the model in train mode, which would move its BatchNorm statistics)."""
        work = copy.deepcopy(model)
        work.train()
        objective = context.build_objective()
        shuffle = torch.Generator(device=context.train.x.device).manual_seed(context.seed)
        batches = context.train.batches(context.objective["batch_size"], shuffle=True, generator=shuffle)
        n = 0
        for x, y in batches:
            loss, _ = objective(work, x, y)
            loss.backward()
            n += 1
            if n == self.taylor_batches:
                break
        return {name: p.grad / n for name, p in work.named_parameters() if p.grad is not None}


def group_sensitivity(groups, table) -> dict[str, float]:
    """MRS per channel group: the largest module sensitivity among the group's output-side layers."""
    # str: read back from CSV, the layer names of an nn.Sequential ("0", "3", ...) come as integers
    by_module = {str(m): float(s) for m, s in zip(table["module"], table["sensitivity"])}
    missing = sorted({layer for g in groups for layer in g.outputs} - set(by_module))
    if missing:
        raise ValueError(f"mrpf: the sensitivity table has no row for {', '.join(missing)} (was it computed for this model and include_first_last?)")
    return {g.name: max(by_module[layer] for layer in g.outputs) for g in groups}


def _counted_cost(model, example, counted: list[str], measure: str) -> int:
    """The `measure` of the given Conv2d/Linear layers only (the pipeline's prunable layers)."""
    costs = layer_costs(model, example)
    return sum(costs[name][measure] for name in counted)
