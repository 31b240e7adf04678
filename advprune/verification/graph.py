"""A model as a list of bound-friendly operations, read from its torch.fx graph.

Our models are nn.Modules whose forward() is code (residual additions, functional ReLU and pooling), so the
bounds walk the traced graph rather than the module list. Each operation keeps a reference to its module, not
a copy of its weights: a masked model (pruned weights zero), a parametrized one (HYDRA's scores) or a
physically smaller one (structured pruning) is bounded with the weights it computes with, and gradients flow
to them during certified training. BatchNorm-folded views (advprune/models/view.py) trace like any model.

Anything else raises `UnsupportedModel` naming the operation.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F


class UnsupportedModel(ValueError):
    """The bounds do not cover this model; the message names the module or function."""


@dataclass
class Op:
    kind: str  # input | linear | conv | bn | relu | maxpool | pool | flatten | add
    inputs: list[int]
    name: str
    module: nn.Module | None = None
    options: dict = field(default_factory=dict)


_IDENTITY_MODULES = (nn.Identity, nn.Dropout)


def _kind_of_module(module: nn.Module, name: str) -> tuple[str, dict]:
    if isinstance(module, nn.Linear):
        return "linear", {}
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise UnsupportedModel(f"{name}: Conv2d with padding {module.padding!r}/{module.padding_mode!r}")
        return "conv", {}
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return "bn", {}
    if isinstance(module, nn.ReLU):
        return "relu", {}
    if isinstance(module, nn.MaxPool2d):
        return "maxpool", {"kernel_size": module.kernel_size, "stride": module.stride, "padding": module.padding, "dilation": module.dilation,
                           "ceil_mode": module.ceil_mode}
    if isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return "pool", {"fn": module.forward}
    if isinstance(module, nn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            raise UnsupportedModel(f"{name}: Flatten({module.start_dim}, {module.end_dim})")
        return "flatten", {}
    raise UnsupportedModel(f"{name}: {type(module).__name__} is not supported by the bounds")


def _arg(node: fx.Node, position: int, keyword: str, default):
    if len(node.args) > position:
        return node.args[position]
    return node.kwargs.get(keyword, default)


def _kind_of_call(node: fx.Node) -> tuple[str, dict]:
    target = node.target
    if target in (F.relu, torch.relu) or (node.op == "call_method" and target in ("relu", "relu_")):
        return "relu", {}
    if target in (operator.add, torch.add, operator.iadd) or (node.op == "call_method" and target == "add"):
        return "add", {}
    if target is F.adaptive_avg_pool2d:
        size = _arg(node, 1, "output_size", None)
        return "pool", {"fn": lambda x: F.adaptive_avg_pool2d(x, size)}
    if target is torch.flatten or (node.op == "call_method" and target == "flatten"):
        if _arg(node, 1, "start_dim", 0) != 1 or _arg(node, 2, "end_dim", -1) != -1:
            raise UnsupportedModel(f"{node.name}: flatten other than flatten(1)")
        return "flatten", {}
    raise UnsupportedModel(f"{node.name}: {node.op} {getattr(target, '__name__', target)!s} is not supported by the bounds")


def trace(model: nn.Module) -> list[Op]:
    """The model's operations in topological order; ops[0] is the input, ops[-1] the output."""
    try:
        graph_module = model if isinstance(model, fx.GraphModule) else fx.symbolic_trace(model)
    except Exception as error:  # noqa: BLE001 - any trace failure means the bounds cannot follow the model
        raise UnsupportedModel(f"{type(model).__name__} cannot be traced by torch.fx: {error}") from error
    modules = dict(graph_module.named_modules())
    ops: list[Op] = []
    index: dict[fx.Node, int] = {}
    output = None
    for node in graph_module.graph.nodes:
        if node.op == "placeholder":
            if ops:
                raise UnsupportedModel(f"{type(model).__name__}: more than one input")
            index[node] = 0
            ops.append(Op("input", [], node.name))
            continue
        if node.op == "output":
            output = node.args[0]
            continue
        if node.op == "get_attr":
            raise UnsupportedModel(f"{node.name}: reads tensor attribute {node.target!r} in forward()")
        inputs = [a for a in node.args if isinstance(a, fx.Node)] + [a for a in node.kwargs.values() if isinstance(a, fx.Node)]
        if node.op == "call_module":
            module = modules[node.target]
            if isinstance(module, _IDENTITY_MODULES) and not (isinstance(module, nn.Dropout) and module.training and module.p > 0):
                index[node] = index[inputs[0]]
                continue
            kind, options = _kind_of_module(module, node.target)
        else:
            module = None
            kind, options = _kind_of_call(node)
        if kind == "add" and (len(inputs) != 2 or len(node.args) != 2 or node.kwargs):
            raise UnsupportedModel(f"{node.name}: addition of something other than two tensors")
        if kind != "add":
            inputs = inputs[:1]
            if any(isinstance(a, fx.Node) for a in list(node.args[1:]) + list(node.kwargs.values())):
                raise UnsupportedModel(f"{node.name}: a second tensor argument")
        index[node] = len(ops)
        ops.append(Op(kind, [index[a] for a in inputs], node.target if node.op == "call_module" else node.name, module, options))
    if not isinstance(output, fx.Node) or index[output] != len(ops) - 1:
        raise UnsupportedModel(f"{type(model).__name__}: the output is not the last operation of the graph")
    return ops
