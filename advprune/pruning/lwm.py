"""Least weight magnitude (LWM): prune the weights of smallest |w|, per layer or by one global ranking,
in one shot or iteratively (Sehwag et al. 2019, "Towards Compact and Robust DNNs").

The pruning criterion of Sehwag et al. 2019 and the LWM baseline of HYDRA; robustness comes from the
objective of the pretraining and fine-tuning around it, not the criterion. The paper's two insights are that
the pretraining and fine-tuning objectives must match the robust objective, and that the criterion stays
agnostic to it; `objective` (null = the pretraining objective) lets matched and mismatched objectives be
compared.

Iterative pruning (`iterations` K > 1; the paper's taxonomy entry, Han et al. 2015): K pruning steps to the
sparsities s_1 < ... < s_K = target, with a fine-tuning round between consecutive steps:

    prune to s_1 -> fine-tune (phase "round1") -> prune to s_2 -> ... -> fine-tune ("round{K-1}") -> prune to s_K

The fine-tuning after the last step is the pipeline's finetune stage, as for every other method, so K = 1 is
exactly one-shot LWM (no training) and the final fine-tuning budget is the same for all methods.
`schedule` picks the intermediate sparsities:
  - geometric: s_k = 1 - (1 - target)^(k/K): every step removes the same fraction of the remaining weights
    ("prune a step more", as iterative magnitude pruning does);
  - linear: s_k = target * k / K: every step removes the same fraction of all weights.
Each step ranks |w| among the weights still kept; pruned weights score below every kept one, so a weight
pruned once stays pruned (fine-tuning keeps it at zero) and the counts of masks_from_scores stay exact:
the final masks have exactly the one-shot number of zeros (per layer with scope 'layer', in total with
'global'). The paper's PGD settings and iteration schedule are not public; the defaults here are the
pipeline's fine-tuning settings (HYDRA's lr 0.01 with a cosine schedule).
"""

import torch

from advprune.pruning import PruneResult, PruningMethod, masks_from_scores, prunable_weights, register_method
from advprune.training import OBJECTIVES, TrainSettings

SCHEDULES = ("geometric", "linear")


@register_method("lwm")
class LWM(PruningMethod):
    def __init__(self, scope: str = "layer", iterations: int = 1, schedule: str = "geometric", finetune_epochs: int = 5, objective: str | None = None,
                 lr: float = 0.01, batch_size: int = 128, momentum: float = 0.9, weight_decay: float = 5e-4, lr_schedule: str = "cosine"):
        if scope not in ("layer", "global"):
            raise ValueError(f"lwm: scope must be 'layer' or 'global', not {scope!r}")
        if not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"lwm: iterations must be an integer >= 1 (1 = one-shot), not {iterations!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"lwm: schedule must be one of {', '.join(SCHEDULES)}, not {schedule!r}")
        if not isinstance(finetune_epochs, int) or finetune_epochs < 1:
            raise ValueError(f"lwm: finetune_epochs must be an integer >= 1, not {finetune_epochs!r}")
        if objective is not None and objective not in OBJECTIVES:
            raise ValueError(f"lwm: objective must be null or one of {', '.join(OBJECTIVES)}, not {objective!r}")
        if not lr > 0 or not (isinstance(batch_size, int) and batch_size >= 1) or not 0 <= momentum <= 1 or not weight_decay >= 0:
            raise ValueError(f"lwm: need lr > 0, batch_size >= 1, 0 <= momentum <= 1, weight_decay >= 0; "
                             f"got lr {lr}, batch_size {batch_size}, momentum {momentum}, weight_decay {weight_decay}")
        if lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lwm: lr_schedule must be 'cosine' or 'constant', not {lr_schedule!r}")
        self.scope, self.iterations, self.schedule, self.objective = scope, iterations, schedule, objective
        self.locality, self.allocation, self.iterative = ("L", "uniform", iterations > 1) if scope == "layer" else ("G", "global", iterations > 1)
        self.settings = TrainSettings(epochs=finetune_epochs, batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      schedule=lr_schedule)

    def sparsity_schedule(self, target: float) -> list[float]:
        """The sparsity after each pruning step; the last is the target itself."""
        k = self.iterations
        if self.schedule == "geometric":
            steps = [1 - (1 - target) ** (i / k) for i in range(1, k)]
        else:
            steps = [target * i / k for i in range(1, k)]
        return [*steps, target]

    def prune(self, model, sparsity, context):
        weights = prunable_weights(model, context.include_first_last)
        if self.iterations == 1:
            masks = masks_from_scores({n: w.detach().abs() for n, w in weights.items()}, sparsity, self.scope)
            return PruneResult(masks=masks, info={"scope": self.scope})

        schedule = self.sparsity_schedule(sparsity)
        masks, curves = None, {}
        for k, step in enumerate(schedule, start=1):
            masks = masks_from_scores(_kept_magnitudes(weights, masks), step, self.scope)
            if k < len(schedule):
                phase = f"round{k}"
                curves[phase] = context.fit(model, context.build_objective(self.objective), self.settings, phase=phase, masks=masks)
        return PruneResult(masks=masks, info={"scope": self.scope, "schedule": schedule, "curves": curves})


def _kept_magnitudes(weights, masks):
    """|w| where kept, -1 where already pruned: a pruned weight ranks below every kept one and stays pruned."""
    scores = {n: w.detach().abs() for n, w in weights.items()}
    if masks is None:
        return scores
    return {n: torch.where(masks[n], s, torch.full_like(s, -1.0)) for n, s in scores.items()}
