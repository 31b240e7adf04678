"""MRPF, Module Robust Pruning and Fine-tuning (Bai, Tabia, Santos-Rodríguez, arXiv 2410.15176): structured
pruning whose per-layer ratios follow each module's robustness sensitivity, then adversarial fine-tuning.

What the paper states (abstracts of v1 and v2, the only text of it we could read): a "Module Robustness
Sensitivity" (MRS) quantifies each layer's sensitivity to adversarial perturbations and adaptively sets that
layer's pruning ratio; filters are ranked by an ordinary criterion (v1: fine-tuning matters more than the
criterion); the pruned network is adversarially fine-tuned (TRADES). No code is public and the exact MRS formula,
its mapping to ratios and any bound on them could not be read, so this is the definition implemented here:

1. Module sensitivity S_l: the sensitivity stage's table (advprune/sensitivity.py, column `sensitivity` per
   `module`), RiFT's module robust criticality: the largest rise of the adversarial loss when the weights of
   module l alone move within a relative L2 ball of radius rho.
2. MRS of a channel group g (advprune/pruning/_structured.py: coupled output channels) is the largest S_l over
   the modules whose filters write those channels (`ChannelGroup.outputs`: one conv for a plain layer; every
   conv adding into a residual stream): a channel is as fragile as its most sensitive writer, and these are the
   weights that removing the channel deletes (the criterion ranks the same filters).
3. Ratios inversely related to MRS, with the budget met by bisection (the mapping proposed in
   shared/reference/methods.md §6.2):

       p_g = clamp(c * (MRS_g / mean_h MRS_h + eps) ** (-sensitivity_power), lower_g, upper_g)

   with c chosen by bisection (`ratios_for_budget`) so that the removed fraction of the prunable weights
   (`measure: params`, the pipeline's sparsity) or of their multiply-accumulates (`measure: flops`) equals the
   target as closely as whole channels allow. Dividing by the mean makes the weights independent of the loss
   scale; eps keeps a group of zero sensitivity finite (it then takes its upper bound); sensitivity_power 0 gives
   uniform ratios, larger powers spread them further.
4. The bounds (our rule, see below): [lower_g, upper_g] = [min_ratio, max_ratio] intersected with the band in
   which group g keeps between 1/max_spread and max_spread times the fraction of its channels that the uniform
   allocation (l1_filter's ratio p_u at the same target and measure) keeps:

       1 - max_spread * (1 - p_u)  <=  p_g  <=  1 - (1 - p_u) / max_spread        (max_spread 2 by default)

5. In each group the round(p_g * n) channels lowest by `criterion` go (l1 / l2 over the group's filters,
   random, or taylor: |w * dL/dw| with L the pretraining objective's adversarial loss over `taylor_batches`
   training batches), physically (a smaller network).
6. Fine-tuning is the pipeline's finetune stage (the paper's objective: TRADES, beta 6).

The spread rule (step 4), fixed before any validation run. The paper, as far as we could read it, bounds
nothing; without a bound the proportional mapping of step 3 lets the least sensitive groups' ratios grow with
the target until max_ratio stops them, so at high sparsity the clamp, not MRS, decides their size: on the default
network (small_cnn width 32, digits) the first conv has the lowest sensitivity (0.60 against 1.0-1.4) and kept
2 of its 32 filters at 90 %, where uniform pruning keeps 10 (issue 17). Why a band around uniform: MRS is measured
for a small perturbation of a module's weights at the dense point (rho = 0.1 of their norm); it ranks modules
by how much robustness hinges on them, but it does not measure what removing most of a module's channels does,
so it may move a layer away from the uniform allocation, not arbitrarily far. Why on the kept fraction: what a
layer can still compute is the channels it keeps, and a band on the ratio would be loose where it matters (at
p_u = 0.68 a ratio of 0.95 is a small step in ratio and a 6x cut in kept channels); a factor on the kept
fraction is equally strict at every sparsity. Why 2: a group may lose at most half of the channels uniform
pruning leaves it, or keep up to twice as many, so MRS still orders and separates the groups (between two
groups the kept fractions may differ by up to 4x) and no group is emptied by the budget alone.
`max_spread: null` restores the unbounded rule. Which groups a bound set, with the ratio they wanted, is in
info["bounded"] and the convergence report.

Validation (benchmarks/mrpf_rule.py; never the test split): the default config's pretrained small_cnn (width 32,
digits), L1 filters, every arm fine-tuned alike (PGD-AT, 5 epochs, seeds 0 and 1), validation split (216 points),
standard AutoAttack, mean of the two seeds (README "MRPF's allocation rule" has the full table):

    sparsity   l1_filter   mrpf (max_spread 2)   mrpf (max_spread null)   conv1 filters kept (uniform / 2 / null)
    50 %       86.3        83.1 (band not bound)  83.1                     23 / 17 / 17
    90 %       74.5        66.2                   58.3                     10 / 5 / 2
    99 %       14.4         9.7                   10.6                      3 / 2 / 2

Fine-tuned with TRADES (90 % only): l1_filter 70.4, mrpf 66.9, unbounded 52.8. The band keeps conv1 from being
emptied and shrinks MRPF's deficit at 90 % (PGD-AT: -8 instead of -16 points; TRADES: -3.5 instead of -17.6);
MRPF stays below uniform ratios at every sparsity, also at 50 % where no bound binds, so what remains is the
sensitivity allocation, not a missing bound. The rule was not changed after these numbers.

When the target cannot be met within the bounds and whole channels, the closest ratios are used, a warning is
logged and info["reduction"] says what was reached; the convergence report (info["convergence"]) then says
converged: false.
"""

import logging

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
    layer_costs,
    ratios_for_budget,
    remove_channels,
    structured_cost,
    taylor_grads,
)
from advprune.pruning.l1_filter import TAXONOMY

log = logging.getLogger(__name__)


@register_method("mrpf")
class MRPF(PruningMethod):
    structured = True
    allocation = "sensitivity"

    def __init__(self, criterion: str = "l1", measure: str = "params", min_ratio: float = 0.0, max_ratio: float = 0.95,
                 sensitivity_power: float = 1.0, eps: float = 1e-3, max_spread: float | None = 2.0, taylor_batches: int = 8):
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
        if max_spread is not None and not max_spread >= 1:
            raise ValueError(f"mrpf: max_spread must be >= 1 (or null: unbounded), not {max_spread!r}")
        if not isinstance(taylor_batches, int) or taylor_batches < 1:
            raise ValueError(f"mrpf: taylor_batches must be an integer >= 1, not {taylor_batches!r}")
        self.criterion, self.measure, self.min_ratio, self.max_ratio = criterion, measure, min_ratio, max_ratio
        self.ap_criterion, self.ranking = TAXONOMY[criterion]
        self.sensitivity_power, self.eps, self.max_spread, self.taylor_batches = sensitivity_power, eps, max_spread, taylor_batches

    def prune(self, model, sparsity, context):
        if context.sensitivity is None:
            raise ValueError("mrpf: needs the sensitivity table (context.sensitivity), from the sensitivity stage")
        example = torch.zeros(1, *context.train.x.shape[1:], device=context.device)
        groups = channel_groups(model, example, context.include_first_last)
        mrs = group_sensitivity(groups, context.sensitivity)
        counted = [name.removesuffix(".weight") for name in prunable_weights(model, context.include_first_last)]
        budget = dict(target=sparsity, measure=self.measure, min_ratio=self.min_ratio, max_ratio=self.max_ratio, counted_layers=counted)
        uniform = ratios_for_budget(model, example, groups, dict.fromkeys(mrs, 1.0), **budget).ratios  # l1_filter's ratios
        bounds = {g: self.spread_bounds(p) for g, p in uniform.items()}
        allocation = ratios_for_budget(model, example, groups, self.ratio_weights(mrs), bounds=bounds, **budget)
        importance = channel_importance(model, groups, self.criterion, generator=torch.Generator().manual_seed(context.seed),
                                        grads=taylor_grads(model, context, self.taylor_batches) if self.criterion == "taylor" else None)
        keep = keep_for_ratios(groups, importance, allocation.ratios)
        small = remove_channels(model, example, keep)

        dense_cost, small_cost = structured_cost(model, example), structured_cost(small, example)
        reduction = 1.0 - _counted_cost(small, example, counted, self.measure) / _counted_cost(model, example, counted, self.measure)
        if abs(reduction - sparsity) > 0.01:
            log.warning("mrpf: removed %.4f of the prunable %s for a target of %.4f (the ratio bounds and whole channels allow no closer)",
                        reduction, self.measure, sparsity)
        names = {g: self._bound_names(allocation.upper[g], allocation.lower[g]) for g in mrs}
        convergence = allocation_report(allocation, sparsity, self.measure, names)
        by_name = {g.name: g for g in groups}
        # which layers a bound stopped, and how far: channels kept against those c * weight (the scale meeting the budget) would keep
        bounded = {g: {**b, "layers": by_name[g].outputs, "channels_kept": int(keep[g].sum()),
                       "channels_wanted": min(by_name[g].n_channels, max(0, round(by_name[g].n_channels * (1.0 - b["wanted"]))))}
                   for g, b in convergence["checks"]["bounded"].items()}
        return PruneResult(model=small, info={
            "criterion": self.criterion,
            "measure": self.measure,
            "sensitivity": mrs,
            "uniform_ratios": uniform,
            "ratios": allocation.ratios,
            "bounds": {g: [allocation.lower[g], allocation.upper[g]] for g in mrs},
            "bounded": bounded,
            "channels": {g.name: [int(keep[g.name].sum()), g.n_channels] for g in groups},
            "reduction": reduction,
            "reduction_all_layers": {m: 1.0 - small_cost[m] / dense_cost[m] for m in MEASURES},
            "convergence": convergence,
        })

    def ratio_weights(self, mrs: dict[str, float]) -> dict[str, float]:
        """(MRS_g / mean MRS + eps) ** -sensitivity_power: the ratio of group g is proportional to this."""
        mean = sum(mrs.values()) / len(mrs)
        return {g: (s / mean + self.eps if mean > 0 else 1.0) ** -self.sensitivity_power for g, s in mrs.items()}

    def spread_bounds(self, uniform_ratio: float) -> tuple[float, float]:
        """The ratios at which a group keeps max_spread times, and 1/max_spread of, what the uniform ratio keeps."""
        if self.max_spread is None:
            return 0.0, 1.0
        kept = 1.0 - uniform_ratio
        return max(0.0, 1.0 - self.max_spread * kept), 1.0 - kept / self.max_spread

    def _bound_names(self, upper: float, lower: float) -> dict[str, str]:
        """Which option a group's bounds come from: max_ratio / min_ratio where they bind, else max_spread."""
        return {"upper": "max_ratio" if upper == self.max_ratio else "max_spread", "lower": "min_ratio" if lower == self.min_ratio else "max_spread"}


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
