"""Evaluation of one model: clean accuracy, PGD and standard AutoAttack robust accuracy on the same points,
plus sparsity, parameter counts, FLOPs and CPU latency measured from the saved weights, against the dense
network of the same architecture (which matters once structured pruning has removed channels)."""

from __future__ import annotations

import copy
import hashlib
import logging
import statistics
import time

import torch
import torch.nn as nn

from advprune.attacks.pgd import PGD
from advprune.models.view import AttackView
from advprune.models.weights import layer_sparsity, prunable_weights

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


@torch.inference_mode()
def cpu_latency(models: list[nn.Module], input_shape: tuple[int, ...], batch_size: int = 64, warmup: int = 2, repeats: int = 10,
                seed: int = 0) -> list[float]:
    """Milliseconds per forward pass of a batch of `batch_size` random inputs on the CPU, per model: copies of
    the eval-mode models (BatchNorm not folded; dense kernels, so zeroed weights cost as much as any other),
    `warmup` untimed passes each, then the median of `repeats` timed passes, the models taking turns within
    each repeat so that a slow spell of a shared machine hits all of them alike. Torch's intra-op threads are
    what the job set (recorded beside the times)."""
    models = [copy.deepcopy(m).cpu().eval() for m in models]
    x = torch.rand(batch_size, *input_shape, generator=torch.Generator().manual_seed(seed))
    for m in models:
        for _ in range(warmup):
            m(x)
    times = [[] for _ in models]
    for _ in range(repeats):
        for m, t in zip(models, times):
            started = time.perf_counter()
            m(x)
            t.append(time.perf_counter() - started)
    return [1000 * statistics.median(t) for t in times]


def model_statistics(model: nn.Module, input_shape: tuple[int, ...], include_first_last: bool = True, dense: nn.Module | None = None,
                     latency: dict | None = None) -> dict:
    """Sparsity, parameter counts and FLOPs of `model` against `dense`, the full-width network of its
    architecture (default: the model itself, right unless channels were removed): sparsity counts both
    removed and zeroed weights of the dense prunable layers; params_* and flops_effective are this model's,
    flops_dense the dense architecture's; `dense_params_total`, `dense_params_prunable` the dense network's.
    With `latency` (cpu_latency's options): `latency_ms`, `latency_dense_ms`, the CPU milliseconds per batch
    of the model and of the dense network, timed the same way, and `latency_settings`."""
    dense = model if dense is None else dense
    dense_prunable = sum(w.numel() for w in prunable_weights(dense, include_first_last).values())
    layers = layer_sparsity(model, include_first_last, dense)
    removed = sum(r["sparsity"] * r["n_params"] for r in layers)
    weights = prunable_weights(model, include_first_last)
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    stats = {
        "sparsity_measured": round(removed) / dense_prunable,
        "params_total": sum(p.numel() for p in model.parameters()),
        "params_nonzero": nonzero,
        "params_prunable": sum(w.numel() for w in weights.values()),
        "dense_params_total": sum(p.numel() for p in dense.parameters()),
        "dense_params_prunable": dense_prunable,
        "flops_dense": count_flops(dense, input_shape)[0],
        "flops_effective": count_flops(model, input_shape)[1],
        "layers": layers,
    }
    if latency is not None:
        ms, dense_ms = cpu_latency([model, dense], input_shape, **latency)
        stats.update(latency_ms=ms, latency_dense_ms=dense_ms, latency_settings={"device": "cpu", "threads": torch.get_num_threads(), **latency})
    return stats


def to_bits(correct: torch.Tensor) -> str:
    """Per-point correctness as one '0'/'1' character per point (read back by `advprune.stats.from_bits`)."""
    return correct.cpu().to(torch.uint8).add(ord("0")).numpy().tobytes().decode("ascii")


def robustness(model: nn.Module, split, n_classes: int, eps: float, norm: str, pgd: dict, autoattack: dict, batch_size: int,
               fold_batchnorm: bool = True, resume: dict | None = None, code: str | None = None) -> dict:
    """Clean, PGD and AutoAttack accuracy over `split` (an ArraySplit on the model's device).

    `per_point` holds each metric's per-point correctness as a '0'/'1' string in the split's order, and
    `points_sha256` a hash of the points and labels evaluated: two records with the same hash were evaluated on
    the same points, so their models can be compared with a paired test (`advprune.stats`).

    Everything runs on the attack view of the eval-mode network (advprune.models.view: max pooling on the
    fast CPU kernel, bit-identical); with `fold_batchnorm` also BatchNorm folded into the convolutions: the
    same function up to float rounding, with a third fewer kernels per call, which is what the ~7,000
    sequential model calls of standard AutoAttack on a small network spend their time on.

    `resume` ({"path", "every"}): AutoAttack saves its progress to that file at most every `every` seconds and
    continues from it after a kill, to the same per-point result (advprune.attacks.state); the state is keyed
    by the attack's own fingerprint and `code` (the evaluation's code hash). The caller removes the file once
    the record is written. Clean accuracy and PGD are not saved: both are seeded, so a rerun reproduces them,
    and they cost a few percent of the evaluation (PGD's steps against AutoAttack's ~7,000 calls).
    """
    if norm != "Linf":
        raise NotImplementedError("only the Linf threat model is evaluated so far")
    from advprune.attacks.autoattack import AutoAttack
    from advprune.attacks.state import AttackState

    model = AttackView(model.eval(), fold_batchnorm).refresh()
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
    state = None if resume is None else AttackState(resume["path"], resume["every"], identity={"evaluation_code": str(code)})
    result = aa(x, y, state)
    seconds["autoattack"] = time.time() - started
    points = hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes() + y.detach().cpu().numpy().tobytes()).hexdigest()
    return {
        "n_examples": len(y),
        "batchnorm_folded": fold_batchnorm,
        "clean_acc": float(clean.float().mean()),
        "pgd_acc": float(pgd_robust.float().mean()),
        "autoattack_acc": float(result.robust_accuracy),
        "autoattack_version": aa.version,
        "autoattack_breakdown": result.robust_after,
        "attack_seconds": {**seconds, **{f"aa_{k}": v for k, v in result.seconds.items()}},
        "points_sha256": points,
        "per_point": {"clean": to_bits(clean.cpu()), "pgd": to_bits(pgd_robust.cpu()), "autoattack": to_bits(result.robust.cpu())},
    }
