"""Structured (channel) pruning that physically removes channels, built on Torch-Pruning's dependency graph.

A *channel group* is one set of coupled output channels found by Torch-Pruning (`DependencyGraph`): the
filters of every Conv2d/Linear that writes into the same feature channels (through residual additions), the
BatchNorms of those channels, and the input channels of every Conv2d/Linear that reads them (a Flatten in
between maps one channel to H*W input features). Removing channel i of a group removes it from all of these at
once, so the network stays well formed. The classifier's output channels never shrink, and with
`include_first_last=False` the first conv's group is left whole too.

The functions work by group name (the first Conv2d/Linear in network order whose output channels belong to
the group, so names are the same for every copy of an architecture):

- `channel_groups(model, x)`: the groups in network order;
- `channel_importance(model, groups, criterion)`: one score per channel ("l1", "l2", "random", "taylor");
- `keep_for_ratios`, `ratios_for_budget`: which channels to keep for per-group ratios, and per-group ratios
  that meet a parameter or FLOPs budget within per-group bounds (an `Allocation`; `allocation_report` says
  whether the budget was met and which groups a bound stopped);
- `remove_channels(model, x, keep)`: a physically smaller deep copy (Torch-Pruning does the surgery);
- `masked_equivalent(model, x, keep)`: the original shapes with the removed channels' contribution zeroed,
  which computes the same function as the smaller network in eval mode (what the tests compare against);
- `layer_costs(model, x)` per Conv2d/Linear, `structured_cost(model, x)` in total: weights and multiply-accumulates of a forward pass;

`x` is an example input batch on the model's device (its values are irrelevant: it only traces the graph).

Magnitude criteria sum over the group's *output-side* filters: for a plain conv group this is exactly the L1
norm of Li et al. 2017 ("Pruning Filters for Efficient ConvNets": sum of |w| of the filter); for a residual
group it adds the filters of every conv that writes into the channel (the shortcut's and each block's last
conv), as Torch-Pruning's group importance does, rather than picking one of them arbitrarily. BatchNorm scales
and the next layers' input weights are not counted (Li et al. count the filter only).

Transformers (MobileViT): a depthwise convolution belongs to the group of the channels it filters (its filters
are output-side filters). Torch-Pruning follows an attention head's dot products as channel-wise operations,
so one group is one head dimension i: channel i of the head's query, key and value projections and the output
projection's input i; removing it removes that term of every query-key product and that column of the head's
output (the attention scale stays the dense one, advprune.models.mobilevit), so the masked model with q_i, k_i,
v_i zeroed computes what the smaller one does. An MLP's hidden units are a plain Linear-to-Linear group. The
embedding width that LayerNorm normalises over is never pruned: LayerNorm's mean and variance span all of it,
so zeroing a channel changes the normalised values of the others and no masked model computes the smaller
network's function (groups holding a LayerNorm are left whole).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn

CRITERIA = ("l1", "l2", "random", "taylor")
MEASURES = ("params", "flops")


@dataclass
class ChannelGroup:
    """One group of coupled output channels. `layers`: every module (Conv2d, Linear, BatchNorm) whose weights
    lose channels with it, in network order; `outputs`: the Conv2d/Linear whose output channels (filters)
    these are; `inputs`: Conv2d/Linear that read them -> how many of their input features the group feeds
    (n_channels, or n_channels * H*W after a Flatten); `norms`: the BatchNorms of these channels."""

    name: str
    layers: list[str]
    n_channels: int
    outputs: list[str] = field(default_factory=list)
    inputs: dict[str, int] = field(default_factory=dict)
    norms: list[str] = field(default_factory=list)


def _weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@contextmanager
def _traceable(model: nn.Module):
    """Eval mode (tracing must not update BatchNorm statistics) with every parameter requiring grad
    (Torch-Pruning follows grad_fn); restores both afterwards."""
    was_training = model.training
    frozen = [p for p in model.parameters() if not p.requires_grad]
    model.eval()
    for p in frozen:
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p in frozen:
            p.requires_grad_(False)
        model.train(was_training)


def _dependency_graph(model: nn.Module, example_input: torch.Tensor):
    import torch_pruning as tp

    for name, m in _weight_layers(model):
        if isinstance(m, nn.Conv2d) and m.groups != 1 and not m.groups == m.in_channels == m.out_channels:
            raise ValueError(f"structured pruning: grouped convolution {name!r} is not supported (depthwise ones are)")
    with _traceable(model):
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input[:1], verbose=False)


def _groups_from_graph(model: nn.Module, graph, include_first_last: bool) -> list[ChannelGroup]:
    order = {m: i for i, (_, m) in enumerate(model.named_modules())}
    names = {m: name for name, m in model.named_modules()}
    layers = _weight_layers(model)
    ignored = [layers[-1][1]] + ([] if include_first_last else [layers[0][1]])
    groups = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv2d, nn.Linear)):
        if any(isinstance(dep.target.module, nn.LayerNorm) for dep, _ in group):
            continue  # a transformer's embedding width: LayerNorm's statistics span it, see the module docstring
        outputs, inputs, norms = [], {}, []
        n_channels = None
        for dep, idxs in group:
            module = dep.target.module
            if module not in names:  # functional ops (add, flatten, pooling) and unwrapped parameters
                if isinstance(module, nn.Parameter):
                    raise ValueError("structured pruning: a bare parameter is coupled to channels; only Conv2d, Linear and BatchNorm are supported")
                continue
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                norms.append(module)
            elif isinstance(module, (nn.Conv2d, nn.Linear)):
                if graph.is_out_channel_pruning_fn(dep.handler):
                    outputs.append(module)
                    n_channels = len(idxs)
                else:
                    inputs[module] = len(idxs)
            elif next(module.parameters(recurse=False), None) is not None:
                raise ValueError(f"structured pruning: {type(module).__name__} {names[module]!r} has channel-coupled parameters; "
                                 "only Conv2d, Linear and BatchNorm are supported")
        by_order = lambda ms: sorted(ms, key=order.__getitem__)  # noqa: E731
        outputs, norms = by_order(outputs), by_order(norms)
        groups.append(ChannelGroup(
            name=names[outputs[0]],
            layers=[names[m] for m in by_order(outputs + norms + list(inputs))],
            n_channels=n_channels,
            outputs=[names[m] for m in outputs],
            inputs={names[m]: inputs[m] for m in by_order(list(inputs))},
            norms=[names[m] for m in norms],
        ))
    return sorted(groups, key=lambda g: order[model.get_submodule(g.name)])


def channel_groups(model: nn.Module, example_input: torch.Tensor, include_first_last: bool = True) -> list[ChannelGroup]:
    """The prunable channel groups of `model` in network order (see the module docstring)."""
    return _groups_from_graph(model, _dependency_graph(model, example_input), include_first_last)


def channel_importance(
    model: nn.Module,
    groups: list[ChannelGroup],
    criterion: str,
    generator: torch.Generator | None = None,
    grads: dict[str, torch.Tensor] | Callable[[nn.Module], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """One score per channel of each group (higher = more important), on the CPU, from the group's output-side
    filters (`ChannelGroup.outputs`, weights only):

    - "l1": sum of |w| over those filters (Li et al. 2017), "l2": sqrt of the sum of w^2;
    - "random": uniform in [0, 1) from `generator`;
    - "taylor": sum of |w * dL/dw| (first-order Taylor estimate of the loss change when the filter is removed,
      Molchanov et al.), with `grads` either {parameter name: dL/dw} or a callable `loss(model) -> scalar`
      (e.g. the mean adversarial loss over a few batches) that is differentiated here.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown channel criterion {criterion!r} ({' | '.join(CRITERIA)})")
    if criterion == "random":
        return {g.name: torch.rand(g.n_channels, generator=generator) for g in groups}
    weights = {name: model.get_submodule(name).weight for g in groups for name in g.outputs}
    if criterion == "taylor":
        if grads is None:
            raise ValueError("channel criterion 'taylor' needs grads (a dict or a loss callable)")
        if callable(grads):
            values = torch.autograd.grad(grads(model), list(weights.values()))
            grads = {f"{name}.weight": g for name, g in zip(weights, values)}
        per_weight = {name: (w.detach() * grads[f"{name}.weight"].to(w.device)).abs() for name, w in weights.items()}
    elif criterion == "l1":
        per_weight = {name: w.detach().abs() for name, w in weights.items()}
    else:
        per_weight = {name: w.detach().pow(2) for name, w in weights.items()}
    scores = {}
    for g in groups:
        s = sum(per_weight[name].flatten(1).sum(1) for name in g.outputs)
        scores[g.name] = (s.sqrt() if criterion == "l2" else s).float().cpu()
    return scores


def taylor_grads(model: nn.Module, context, batches: int) -> dict[str, torch.Tensor]:
    """dL/dw for criterion "taylor": the gradient of the pretraining objective's mean loss (the adversarial loss,
    for an adversarial objective) over the first `batches` shuffled training batches of `context` (a
    PruneContext), on a copy: the objective runs the model in train mode, which would move its BatchNorm statistics."""
    work = copy.deepcopy(model)
    work.train()
    objective = context.build_objective()
    shuffle = torch.Generator(device=context.train.x.device).manual_seed(context.seed)
    n = 0
    for x, y in context.train.batches(context.objective["batch_size"], shuffle=True, generator=shuffle):
        loss, _ = objective(work, x, y)
        loss.backward()
        n += 1
        if n == batches:
            break
    return {name: p.grad / n for name, p in work.named_parameters() if p.grad is not None}


def _n_pruned(ratio: float, n: int) -> int:
    return min(max(round(ratio * n), 0), n - 1)


def keep_for_ratios(groups: list[ChannelGroup], importance: dict[str, torch.Tensor], ratios: dict[str, float]) -> dict[str, torch.Tensor]:
    """Per group, drop the round(ratio * n) least important channels (ties by index; at least one is kept);
    groups without a ratio keep every channel."""
    keep = {}
    for g in groups:
        k = torch.ones(g.n_channels, dtype=torch.bool)
        n_pruned = _n_pruned(ratios.get(g.name, 0.0), g.n_channels)
        if n_pruned:
            k[torch.argsort(importance[g.name], stable=True)[:n_pruned]] = False
        keep[g.name] = k
    return keep


def _check_keep(groups: list[ChannelGroup], keep: dict[str, torch.Tensor]) -> dict[str, ChannelGroup]:
    by_name = {g.name: g for g in groups}
    for name, k in keep.items():
        if name not in by_name:
            raise ValueError(f"{name!r} is not a prunable channel group (known: {', '.join(by_name)})")
        if k.dtype != torch.bool or k.shape != (by_name[name].n_channels,):
            raise ValueError(f"keep[{name!r}] must be a bool vector of {by_name[name].n_channels} channels, got {k.dtype} {tuple(k.shape)}")
        if not k.any():
            raise ValueError(f"keep[{name!r}] removes every channel of the group")
    return by_name


def remove_channels(model: nn.Module, example_input: torch.Tensor, keep: dict[str, torch.Tensor]) -> nn.Module:
    """A deep copy of `model` without the channels that `keep` (group name -> bool per channel, True = kept)
    drops, in every coupled layer; the copy has the original's train/eval mode."""
    small = copy.deepcopy(model)
    graph = _dependency_graph(small, example_input)
    _check_keep(_groups_from_graph(small, graph, include_first_last=True), keep)
    for name, k in keep.items():
        if k.all():
            continue
        module = small.get_submodule(name)
        pruner = graph.get_pruner_of_module(module)
        group = graph.get_pruning_group(module, pruner.prune_out_channels, (~k).nonzero().flatten().tolist())
        group.prune()
    return small


@torch.no_grad()
def masked_equivalent(model: nn.Module, example_input: torch.Tensor, keep: dict[str, torch.Tensor]) -> nn.Module:
    """A deep copy of `model`, same shapes, in which the dropped channels are exactly zero everywhere: their
    filters (and biases) and their BatchNorm weight and bias are zeroed, so in eval mode they output 0 and the
    layers reading them see what the smaller network computes without them."""
    masked = copy.deepcopy(model)
    by_name = _check_keep(channel_groups(masked, example_input), keep)
    for name, k in keep.items():
        dropped = ~k.to(next(masked.parameters()).device)
        g = by_name[name]
        for layer in g.outputs + g.norms:
            module = masked.get_submodule(layer)
            for p in (module.weight, module.bias):
                if p is not None:
                    p[dropped] = 0
    return masked


def layer_costs(model: nn.Module, example_input: torch.Tensor) -> dict[str, dict[str, int]]:
    """Per Conv2d/Linear: its weight count and its multiply-accumulates for one example (as count_flops)."""
    costs, handles = {}, []
    for name, m in _weight_layers(model):
        def hook(module, inputs, output, name=name):
            costs[name] = {"params": module.weight.numel(), "flops": output.numel() // output.shape[1] * module.weight.numel()}

        handles.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input[:1])
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return costs


def structured_cost(model: nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    """{"params": Conv2d+Linear weights, "flops": their multiply-accumulates for one example}."""
    costs = layer_costs(model, example_input)
    return {m: sum(c[m] for c in costs.values()) for m in MEASURES}


@dataclass
class Allocation:
    """Per-group pruning ratios for a budget (`ratios_for_budget`): `ratios` the ones used, `wanted` scale * weight
    before any bound, `lower`/`upper` each group's bounds, `reduction` the fraction of the counted measure that
    `keep_for_ratios` removes with these ratios."""

    ratios: dict[str, float]
    wanted: dict[str, float]
    lower: dict[str, float]
    upper: dict[str, float]
    reduction: float

    def bounded(self) -> dict[str, dict]:
        """The groups whose ratio a bound set instead of scale * weight: {group: {"ratio", "wanted", "side"}}."""
        out = {}
        for g, r in self.ratios.items():
            # at its upper bound with scale * weight at or past it (out of reach, every group sits exactly there)
            side = "upper" if self.wanted[g] >= self.upper[g] else "lower" if self.wanted[g] < self.lower[g] else None
            if side:
                out[g] = {"ratio": r, "wanted": self.wanted[g], "side": side}
        return out


def ratios_for_budget(
    model: nn.Module,
    example_input: torch.Tensor,
    groups: list[ChannelGroup],
    weights: dict[str, float],
    target: float,
    measure: str = "params",
    min_ratio: float = 0.0,
    max_ratio: float = 0.95,
    counted_layers: list[str] | None = None,
    bounds: dict[str, tuple[float, float]] | None = None,
) -> Allocation:
    """Per-group pruning ratios clamp(s * weights[g], lower_g, upper_g) (groups missing from `weights` get weight
    0; the bounds are [min_ratio, max_ratio], narrowed per group by `bounds`), with the scale s found by bisection
    so that the fraction of the dense `measure` ("params": weights, "flops": multiply-accumulates) of
    `counted_layers` (default: every Conv2d/Linear) removed by `keep_for_ratios` is as close to `target` as channel
    granularity allows. When even every upper bound falls short, those are the ratios returned."""
    if measure not in MEASURES:
        raise ValueError(f"unknown budget measure {measure!r} ({' | '.join(MEASURES)})")
    if not 0.0 <= min_ratio <= max_ratio < 1.0:
        raise ValueError(f"need 0 <= min_ratio <= max_ratio < 1, got {min_ratio}, {max_ratio}")
    unknown = (set(weights) | set(bounds or {})) - {g.name for g in groups}
    if unknown:
        raise ValueError(f"weights or bounds for unknown channel groups: {sorted(unknown)}")
    if any(w < 0 for w in weights.values()):
        raise ValueError("ratios_for_budget: weights must be >= 0")
    layers = dict(_weight_layers(model))
    costs = {name: c[measure] for name, c in layer_costs(model, example_input).items()}
    if counted_layers is not None:
        costs = {name: costs[name] for name in counted_layers}
    in_features = {name: (m.in_channels if isinstance(m, nn.Conv2d) else m.in_features) for name, m in layers.items()}
    lower = {g.name: max(min_ratio, (bounds or {}).get(g.name, (0.0, 1.0))[0]) for g in groups}
    upper = {g.name: max(lower[g.name], min(max_ratio, (bounds or {}).get(g.name, (0.0, 1.0))[1])) for g in groups}

    def ratios_at(scale: float) -> dict[str, float]:
        return {g.name: min(max(scale * weights.get(g.name, 0.0), lower[g.name]), upper[g.name]) for g in groups}

    def removed_at(scale: float) -> float:
        ratios = ratios_at(scale)
        return _removed(costs, in_features, groups, {g.name: _n_pruned(ratios[g.name], g.n_channels) for g in groups})

    def allocation(scale: float) -> Allocation:
        return Allocation(ratios_at(scale), {g.name: scale * weights.get(g.name, 0.0) for g in groups}, lower, upper, removed_at(scale))

    positive = [w for w in weights.values() if w > 0]
    lo, hi = 0.0, (max(upper.values()) / min(positive) if positive else 0.0)
    if removed_at(hi) <= target:
        return allocation(hi)
    for _ in range(60):
        mid = (lo + hi) / 2
        if removed_at(mid) <= target:
            lo = mid
        else:
            hi = mid
    return allocation(lo if target - removed_at(lo) <= removed_at(hi) - target else hi)


BUDGET_TOLERANCE = 0.01  # a one-shot allocation met its budget when it removed the target to within 1 point


def allocation_report(allocation: Allocation, target: float, measure: str, bound_names: dict[str, dict[str, str]] | None = None) -> dict:
    """The convergence report of a one-shot structured allocation ({"converged", "summary", "checks"}): it has no
    schedule to run through; it converged when it removed the target fraction of the prunable `measure` (whole
    channels and the ratio bounds may not allow it, e.g. at 99 % of a narrow network). `checks.bounded` names every
    group whose ratio a bound set, with the ratio the allocation wanted and the bound that stopped it
    (`bound_names[group][side]`, default the side)."""
    met = abs(allocation.reduction - target) <= BUDGET_TOLERANCE
    bounded = {g: {**b, "bound": (bound_names or {}).get(g, {}).get(b["side"], b["side"])} for g, b in allocation.bounded().items()}
    summary = f"one-shot: removed {allocation.reduction:.4f} of the prunable {measure} for a target of {target:.4f}"
    if not met:
        summary += " (the ratio bounds and whole channels allow no closer)"
    if bounded:
        where = (f"{g} ({b['bound']}: {b['ratio']:.3f}, wanted {b['wanted']:.3f})" for g, b in bounded.items())
        summary += "; ratio set by a bound in " + ", ".join(where)
    return {"converged": met, "summary": summary,
            "checks": {"target": target, "reached": allocation.reduction, "budget_met": met, "bounded": bounded}}


def _removed(costs: dict[str, int], in_features: dict[str, int], groups: list[ChannelGroup], n_pruned: dict[str, int]) -> float:
    """Fraction of sum(costs) removed when n_pruned[g] channels of each group go: each layer keeps the kept
    fraction of its output channels times the kept fraction of its input features."""
    out_keep = dict.fromkeys(costs, 1.0)
    in_removed = dict.fromkeys(costs, 0.0)
    for g in groups:
        frac = n_pruned[g.name] / g.n_channels
        for layer in g.outputs:
            if layer in out_keep:
                out_keep[layer] -= frac
        for layer, n_features in g.inputs.items():
            if layer in in_removed:
                in_removed[layer] += frac * n_features
    kept = sum(c * out_keep[name] * (1.0 - in_removed[name] / in_features[name]) for name, c in costs.items())
    return 1.0 - kept / sum(costs.values())

