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
'global').

The rounds' training. Sehwag et al. 2019 published no code (inspire-group/compactness-robustness resolves to
HYDRA's repository), and the only official LWM code is HYDRA's baseline: fine-tuning with the scaled score init
frozen (`--exp-mode finetune --scaled-score-init`, lr 0.01). The rounds therefore run HYDRA's fine-tuning loop:
lr 0.01, momentum 0.9, weight decay 1e-4, batch 128, `lr_schedule: hydra_cosine` and `batchnorm: hydra`
(advprune.training.trainer), each round keeping its last epoch (the next step prunes what it trained). Their
objective is the pretraining objective (`objective: null`), the paper's matched robust objective (HYDRA's
baseline: TRADES after TRADES pretraining). Not official: the number of steps K, the schedule of sparsities and
`finetune_epochs` (HYDRA fine-tunes 100 epochs once; the papers' iteration schedule is not public).

One-shot LWM fine-tuned with HYDRA's official loop (the finetune section of benchmarks/parity.py, 5 epochs at 90 %,
4 seeds, standard AutoAttack on the 359 test points): ours 65.3 % (66.6 / 61.8 / 66.9 / 66.0), a port of the
official loop (fine-tuning with the scaled score init frozen) 66.4 % (68.0 / 67.1 / 63.5 / 67.1, 95 % interval
[61.4, 71.3]); ours - port -1.1 points [-4.8, +2.4]. The masks agree but for one weight of 61,984: the official
GetSubnet prunes int(sparsity * n) of a layer, masks_from_scores round(sparsity * n).

Convergence (info["convergence"]): every pruning step reached its sparsity, counted on the masks (per layer
with scope 'layer', in total with 'global'), and every fine-tuning round ran all its epochs. One-shot LWM
reports its single step.
"""

import torch

from advprune.models.weights import prunable_weights
from advprune.pruning import PruneResult, PruningMethod, masks_from_scores, register_method
from advprune.training import OBJECTIVES, TrainSettings

SCHEDULES = ("geometric", "linear")


@register_method("lwm")
class LWM(PruningMethod):
    def __init__(self, scope: str = "layer", iterations: int = 1, schedule: str = "geometric", finetune_epochs: int = 5, objective: str | None = None,
                 lr: float = 0.01, batch_size: int = 128, momentum: float = 0.9, weight_decay: float = 1e-4, lr_schedule: str = "hydra_cosine",
                 batchnorm: str = "hydra"):
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
        if lr_schedule not in ("hydra_cosine", "cosine", "constant"):
            raise ValueError(f"lwm: lr_schedule must be 'hydra_cosine', 'cosine' or 'constant', not {lr_schedule!r}")
        if batchnorm not in ("hydra", "loss"):
            raise ValueError(f"lwm: batchnorm must be 'hydra' or 'loss', not {batchnorm!r}")
        self.scope, self.iterations, self.schedule, self.objective = scope, iterations, schedule, objective
        self.locality, self.allocation, self.iterative = ("L", "uniform", iterations > 1) if scope == "layer" else ("G", "global", iterations > 1)
        self.settings = TrainSettings(epochs=finetune_epochs, batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      schedule=lr_schedule, batchnorm=batchnorm)

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
        schedule = self.sparsity_schedule(sparsity) if self.iterations > 1 else [sparsity]
        masks, curves, reached = None, {}, []
        for k, step in enumerate(schedule, start=1):
            masks = masks_from_scores(_kept_magnitudes(weights, masks), step, self.scope)
            reached.append(self._sparsity_check(masks, step))
            if k < len(schedule):
                phase = f"round{k}"
                curves[phase] = context.fit(model, context.build_objective(self.objective), self.settings, phase=phase, masks=masks)
        info = {"scope": self.scope, "convergence": self._convergence(reached, curves)}
        if self.iterations > 1:
            info.update(schedule=schedule, curves=curves)
        return PruneResult(masks=masks, info=info)

    def _sparsity_check(self, masks: dict[str, torch.Tensor], target: float) -> dict:
        """The step's measured sparsity, ok when the masks hold exactly the zeros the target asks for (per layer
        with scope 'layer', in total with 'global')."""
        zeros = {n: int((~m).sum()) for n, m in masks.items()}
        total = sum(m.numel() for m in masks.values())
        if self.scope == "layer":
            ok = all(zeros[n] == round(target * m.numel()) for n, m in masks.items())
        else:
            ok = sum(zeros.values()) == round(target * total)
        return {"value": sum(zeros.values()) / total, "target": target, "ok": ok}

    def _convergence(self, reached: list[dict], curves: dict[str, list[dict]]) -> dict:
        checks = {f"step{k}_sparsity": check for k, check in enumerate(reached, start=1)}
        missed = [k for k, check in enumerate(reached, start=1) if not check["ok"]]
        summary = (f"{len(reached)} pruning step(s) at sparsity " + ", ".join(f"{c['value']:.4g}" for c in reached) + ": "
                   + (f"step(s) {missed} missed the target" if missed else "each reached its target"))
        if curves:
            done = sum(len(rows) == self.settings.epochs for rows in curves.values())
            checks["rounds_completed"] = {"value": done, "target": len(curves), "ok": done == len(curves)}
            summary += f"; {done} of {len(curves)} fine-tuning rounds ran all {self.settings.epochs} epochs"
        return {"converged": all(c["ok"] for c in checks.values()), "summary": summary, "checks": checks}


def _kept_magnitudes(weights, masks):
    """|w| where kept, -1 where already pruned: a pruned weight ranks below every kept one and stays pruned."""
    scores = {n: w.detach().abs() for n, w in weights.items()}
    if masks is None:
        return scores
    return {n: torch.where(masks[n], s, torch.full_like(s, -1.0)) for n, s in scores.items()}
