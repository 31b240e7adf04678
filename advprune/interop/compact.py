"""Remove the channels of a dense-shaped network that are exactly zero everywhere: the form a structured model
takes in a checkpoint whose format has only the dense shapes (the AP benchmark's, advprune.interop.benchmark).

A channel of a group (advprune.pruning._structured: every layer that writes it, its BatchNorms, every layer
that reads it) is dead when every filter (and bias) writing it is zero and every BatchNorm of the group has
weight and bias zero for it: it then carries exactly 0 to every reader, whatever the input, so the network
without it computes the same function. Removing it is what makes such a model the smaller network it is (the
same tensors as before its export, `advprune export`), with its measured sparsity, FLOPs and latency. Weights
zeroed only on the reading side (HARP's input-channel masks) leave the channel alive: those models keep their
dense shapes, with their zeros.
"""

from __future__ import annotations

import torch
import torch.nn as nn


@torch.no_grad()
def dead_channels(model: nn.Module, example: torch.Tensor) -> dict[str, torch.Tensor]:
    """Group name -> bool per channel, True = kept, for the groups with dead channels (at least one channel of a
    group is always kept: a layer without outputs is not a network)."""
    from advprune.pruning._structured import channel_groups

    keep = {}
    for group in channel_groups(model, example):
        dead = torch.ones(group.n_channels, dtype=torch.bool)
        for name in group.outputs:
            layer = model.get_submodule(name)
            dead &= (layer.weight.flatten(1) == 0).all(1).cpu()
            if layer.bias is not None:
                dead &= (layer.bias == 0).cpu()
        for name in group.norms:
            norm = model.get_submodule(name)
            if norm.weight is None:
                dead[:] = False
                break
            dead &= ((norm.weight == 0) & (norm.bias == 0)).cpu()
        if dead.all():
            dead[0] = False
        if dead.any():
            keep[group.name] = ~dead
    return keep


def compact(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, int]:
    """`model` without its dead channels (itself when it has none), and how many channels were removed."""
    from advprune.pruning._structured import remove_channels

    keep = dead_channels(model, example)
    if not keep:
        return model, 0
    return remove_channels(model, example, keep), sum(int((~k).sum()) for k in keep.values())
