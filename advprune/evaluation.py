"""Evaluation of one model: clean accuracy, PGD and standard AutoAttack robust accuracy on the same points,
plus sparsity, parameter counts and FLOPs measured from the saved weights."""

from __future__ import annotations

import logging
import time

import torch
import torch.nn as nn

from advprune.attacks.fused import FoldedBatchNorm
from advprune.attacks.pgd import PGD
from advprune.pruning import layer_sparsity, prunable_weights

log = logging.getLogger(__name__)


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """Multiply-accumulates of one forward pass through conv and linear layers: (dense, effective), where
    effective counts only nonzero weights (what a sparse kernel would execute)."""
    dense = effective = 0

    def hook(module, inputs, output):
        nonlocal dense, effective
        w = module.weight
        positions = output.numel() // output.shape[1]  # batch 1: spatial positions per output channel
        dense += positions * w.numel()
        effective += positions * int((w != 0).sum())

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return dense, effective


def model_statistics(model: nn.Module, input_shape: tuple[int, ...], include_first_last: bool = True) -> dict:
    weights = prunable_weights(model, include_first_last)
    prunable = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    flops_dense, flops_effective = count_flops(model, input_shape)
    return {
        "sparsity_measured": zeros / prunable,
        "params_total": total,
        "params_nonzero": nonzero,
        "params_prunable": prunable,
        "flops_dense": flops_dense,
        "flops_effective": flops_effective,
        "layers": layer_sparsity(model, include_first_last),
    }


def robustness(model: nn.Module, split, n_classes: int, eps: float, norm: str, pgd: dict, autoattack: dict, batch_size: int, fold_batchnorm: bool = True) -> dict:
    """Clean, PGD and AutoAttack accuracy over `split` (an ArraySplit on the model's device).

    With `fold_batchnorm`, everything runs on the eval-mode network with BatchNorm folded into the
    convolutions: the same function up to float rounding, with a third fewer kernels per call, which is what
    the ~7,000 sequential model calls of standard AutoAttack on a small network spend their time on.
    """
    if norm != "Linf":
        raise NotImplementedError("only the Linf threat model is evaluated so far")
    from advprune.attacks.autoattack import AutoAttack

    model.eval()
    if fold_batchnorm:
        model = FoldedBatchNorm(model).refresh()
    x, y = split.float_x(), split.y
    started = time.time()
    with torch.no_grad():
        clean = torch.cat([model(xb).argmax(1) == yb for xb, yb in zip(x.split(batch_size), y.split(batch_size))])
    seconds = {"clean": time.time() - started}

    started = time.time()
    attack = PGD(eps, pgd["step_size"], pgd["steps"], random_start=True, restarts=pgd["restarts"])
    torch.manual_seed(autoattack.get("seed", 0))
    pgd_robust = torch.cat([attack(model, xb, yb)[1] for xb, yb in zip(x.split(batch_size), y.split(batch_size))])
    seconds["pgd"] = time.time() - started
    log.info("clean %.4f, PGD-%d %.4f (%.1fs)", float(clean.float().mean()), pgd["steps"], float(pgd_robust.float().mean()), seconds["pgd"])

    started = time.time()
    aa = AutoAttack(model, norm=norm, eps=eps, n_classes=n_classes, version=autoattack.get("version", "standard"), seed=autoattack.get("seed", 0), batch_size=batch_size)
    result = aa(x, y)
    seconds["autoattack"] = time.time() - started
    return {
        "n_examples": len(y),
        "batchnorm_folded": fold_batchnorm,
        "clean_acc": float(clean.float().mean()),
        "pgd_acc": float(pgd_robust.float().mean()),
        "autoattack_acc": float(result.robust_accuracy),
        "autoattack_breakdown": result.robust_after,
        "attack_seconds": {**seconds, **{f"aa_{k}": v for k, v in result.seconds.items()}},
    }
