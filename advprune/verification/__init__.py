"""Verified (certified) robustness: IBP and CROWN bounds on the margins f_y - f_j over an L-inf ball.

`verified_accuracy(model, x, y, eps)` certifies each point with each method: a point counts as certified
when the lower bound of every margin y - j is > 0 on the ball clipped to [0, 1], so every input in the
ball is classified y. Methods:
- `ibp`: interval bound propagation (the last layer merged with the margin specification);
- `crown`: CROWN backward linear bounds from the margins; with `crown_intermediate="ibp"` (the default)
  the ReLU/max-pool input bounds come from IBP (CROWN-IBP, the bound CROWN-IBP training optimises: one
  backward pass per point, about as cheap as a few forward passes), with "crown" every such bound comes from
  its own CROWN pass (full CROWN: tighter on deeper networks, one backward pass per neuron: small networks).
The union ("either certifies") is what `verified_acc` reports: both bounds are sound, so the tighter counts.

Bounds cover Conv2d, Linear, BatchNorm (eval: running statistics), ReLU, max pooling (CROWN: non-overlapping
windows), average and adaptive average pooling, flatten and residual additions, i.e. small_cnn, vgg16_bn,
resnet18 and wrn_28_4, masked, parametrized, BatchNorm-folded or physically smaller. Anything else raises
`UnsupportedModel` naming the module.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from advprune.verification.bounds import BoundedModel, input_box, margin_spec
from advprune.verification.graph import UnsupportedModel

METHODS = ("ibp", "crown")

__all__ = ["METHODS", "BoundedModel", "UnsupportedModel", "Verification", "input_box", "margin_bounds", "margin_spec", "record_fields",
           "verified_accuracy"]

log = logging.getLogger(__name__)


def margin_bounds(bounded: BoundedModel, x: torch.Tensor, y: torch.Tensor, eps: float, method: str, n_classes: int,
                  crown_intermediate: str = "ibp", clean: torch.Tensor | None = None) -> torch.Tensor:
    """Lower bounds [B, n_classes - 1] of f_y - f_j (j != y) over the ball; `clean`: the clean batch, needed by
    BatchNorm in train mode (certified training)."""
    lower, upper = input_box(x, eps)
    spec = margin_spec(y, n_classes).to(x.dtype)
    if method == "ibp":
        return bounded.ibp(lower, upper, clean, spec)[1]
    if method == "crown":
        return bounded.crown(lower, upper, spec, clean, intermediate=crown_intermediate, need_upper=False)[0]
    raise ValueError(f"unknown verification method {method!r}; known: {', '.join(METHODS)}")


def _certify(bounded: BoundedModel, x, y, eps, methods, n_classes, crown_intermediate) -> dict[str, tuple[torch.Tensor, float]]:
    """Method -> (certified per point, seconds); CROWN reuses the IBP pass that IBP's own bound made."""
    lower, upper = input_box(x, eps)
    spec = margin_spec(y, n_classes).to(x.dtype)
    started = time.perf_counter()
    result = bounded.ibp(lower, upper, None, spec)
    out = {"ibp": ((result[1] > 0).all(1), time.perf_counter() - started)}
    if "crown" in methods:
        started = time.perf_counter()
        margins = bounded.crown(lower, upper, spec, intermediate=crown_intermediate, need_upper=False, ibp_result=result)[0]
        out["crown"] = ((margins > 0).all(1), time.perf_counter() - started)
    return out


@dataclass
class Verification:
    certified: dict[str, torch.Tensor]  # method -> bool per point
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def either(self) -> torch.Tensor:
        """Certified by at least one method."""
        return torch.stack(list(self.certified.values())).any(0)


@torch.no_grad()
def verified_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, methods=METHODS, batch_size: int = 128,
                      crown_intermediate: str = "ibp") -> Verification:
    """Per-point certificates of the eval-mode `model` on the L-inf ball of radius eps (clipped to [0, 1]),
    in batches of `batch_size` (memory grows with batch x classes x the largest activation). One IBP pass
    serves both methods (CROWN-IBP's intermediate bounds): `seconds["crown"]` is CROWN's backward pass, plus
    the IBP pass when `ibp` is not among the methods."""
    bounded = BoundedModel(model)
    was_training = model.training
    model.eval()
    try:
        n_classes = model(x[:1]).shape[1]
        unknown = set(methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown verification method(s) {sorted(unknown)}; known: {', '.join(METHODS)}")
        batches = [_certify(bounded, xb, yb, eps, methods, n_classes, crown_intermediate) for xb, yb in zip(x.split(batch_size), y.split(batch_size))]
        certified = {m: torch.cat([b[m][0] for b in batches]).cpu() for m in methods}
        seconds = {m: sum(b[m][1] for b in batches) for m in methods}
        if "ibp" not in methods:  # the IBP pass was CROWN-IBP's own
            seconds["crown"] += sum(b["ibp"][1] for b in batches)
    finally:
        model.train(was_training)
    return Verification(certified, seconds)


def record_fields(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, settings: dict | None, fold_batchnorm: bool = True
                  ) -> tuple[dict, torch.Tensor | None]:
    """The evaluation record's verification fields on the points (x, y), and the per-point certificates
    (certified by either method; None when not computed). `settings`: the config's evaluate.verify
    ({methods, crown_intermediate, batch_size}; None = off). Accuracies of methods that did not run are
    null, never zero; `verification` says whether and how they were computed."""
    fields = {f"verified_{m}_acc": None for m in METHODS} | {"verified_acc": None, "verification_seconds": {}}
    if not settings:
        reason = "evaluate.verify is null"
    else:
        from advprune.models.view import AttackView

        view = AttackView(model.eval(), fold_batchnorm).refresh()  # the network the attacks ran on
        try:
            result = verified_accuracy(view, x, y, eps, settings["methods"], settings["batch_size"], settings["crown_intermediate"])
        except UnsupportedModel as error:
            reason = f"unsupported by the bounds: {error}"
        else:
            for method, certified in result.certified.items():
                fields[f"verified_{method}_acc"] = float(certified.float().mean())
            fields["verified_acc"] = float(result.either.float().mean())
            fields["verification_seconds"] = {**result.seconds, "total": sum(result.seconds.values())}
            fields["verification"] = {"status": "computed", "methods": list(settings["methods"]),
                                      "crown_intermediate": settings["crown_intermediate"],
                                      "batchnorm_folded": fold_batchnorm}
            log.info("verified %.4f (%s; %.1fs)", fields["verified_acc"],
                     ", ".join(f"{m} {fields[f'verified_{m}_acc']:.4f}" for m in result.certified), fields["verification_seconds"]["total"])
            return fields, result.either
    log.warning("verified accuracy not computed: %s", reason)
    fields["verification"] = {"status": "not computed", "reason": reason}
    return fields, None
