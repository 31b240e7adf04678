"""An eval-mode view of a model for attacks: every Conv2d -> BatchNorm2d pair folded into one convolution,
and max pooling on PyTorch's fast CPU kernel.

Attack iterations run the model in eval mode many times per training step, where BatchNorm is a fixed
affine map: folding it into the preceding convolution removes a kernel from every forward and backward pass.
PyTorch's CPU max pooling is several times slower on NCHW tensors than on channels-last ones (on small_cnn
it was a third of a forward pass); both kernels pick the same maximum and index in every window, so pooling
a channels-last copy gives bit-identical values and gradients.
The graph is traced once; `refresh()` re-folds the current weights (cheap tensor ops) before each attack.
The view computes the same function as `model.eval()` up to the folding's float rounding. Models that torch.fx
cannot trace are used as they are.
"""

from __future__ import annotations

import logging

import torch
import torch.fx as fx
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

log = logging.getLogger(__name__)


class ChannelsLastMaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d that pools an NCHW CPU tensor through a channels-last copy; same output, same layout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dim() != 4 or x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)
        return super().forward(x.contiguous(memory_format=torch.channels_last)).contiguous()


class AttackView:
    def __init__(self, model: nn.Module, fold_batchnorm: bool = True):
        """`fold_batchnorm=False` keeps BatchNorm as it is (the exact eval-mode function); pooling is swapped
        either way, since that changes no bit."""
        self.model = model
        self.pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d, nn.Conv2d]] = []
        try:
            graph_module = fx.symbolic_trace(model)
        except Exception as error:  # noqa: BLE001 - any untraceable model simply runs unfolded
            log.info("attack view off: model not traceable (%s)", error)
            self.view = model
            return
        modules = dict(graph_module.named_modules())
        for node in list(graph_module.graph.nodes):
            bn = modules.get(node.target) if node.op == "call_module" and fold_batchnorm else None
            if not isinstance(bn, nn.BatchNorm2d) or not bn.track_running_stats:
                continue
            source = node.args[0]
            conv = modules.get(source.target) if isinstance(source, fx.Node) and source.op == "call_module" else None
            if not isinstance(conv, nn.Conv2d) or len(source.users) != 1:
                continue
            # Drawing the initial weights (overwritten by refresh) must not consume the caller's random stream:
            # where the first attack happens (epoch 1, or the first epoch after a resume) must not change it.
            # (torch.nn.utils.skip_init would avoid the draw, but its meta-device path imports sympy: ~1 s per job.)
            with torch.random.fork_rng(devices=[conv.weight.device] if conv.weight.is_cuda else []):
                folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups,
                                   bias=True, padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
            folded.requires_grad_(False)
            if conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous():
                folded.to(memory_format=torch.channels_last)  # keep the training fast path's NHWC kernels
            name = f"folded_{len(self.pairs)}"
            graph_module.add_submodule(name, folded)
            source.target = name  # the conv node now calls the folded conv...
            node.replace_all_uses_with(source)  # ...and the BatchNorm node is bypassed
            graph_module.graph.erase_node(node)
            self.pairs.append((conv, bn, folded))
        for node in graph_module.graph.nodes:
            pool = modules.get(node.target) if node.op == "call_module" else None
            if type(pool) is nn.MaxPool2d:
                name = f"pool_{node.name}"
                graph_module.add_submodule(name, ChannelsLastMaxPool2d(pool.kernel_size, pool.stride, pool.padding, pool.dilation,
                                                                       pool.return_indices, pool.ceil_mode))
                node.target = name
        graph_module.graph.lint()
        graph_module.recompile()
        self.view = graph_module

    @torch.no_grad()
    def refresh(self) -> nn.Module:
        """Fold the current weights and running statistics; returns the view, in eval mode.

        The view shares its unfolded modules (dropout, unfolded BatchNorm) with the model, so this puts the
        model in eval mode too: callers attack inside an eval section and restore the mode afterwards."""
        for conv, bn, folded in self.pairs:
            weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
            folded.weight.copy_(weight)
            folded.bias.copy_(bias)
        return self.view.eval()
