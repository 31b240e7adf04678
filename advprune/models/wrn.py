"""Wide ResNet WRN-depth-k (pre-activation): WRN-28-4 as used by HYDRA and HARP, WRN-34-10 as PwoA prunes."""

import torch.nn as nn
import torch.nn.functional as F

from advprune.models import register_model


class WideBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x):
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return out + (self.shortcut(pre) if self.shortcut is not None else x)


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, n_classes: int, in_channels: int, base: int):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError("WRN depth must be 6n+4")
        n = (depth - 4) // 6
        widths = [base, base * widen, 2 * base * widen, 4 * base * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        blocks, in_planes = [], widths[0]
        for stage, planes in enumerate(widths[1:]):
            for j in range(n):
                blocks.append(WideBlock(in_planes, planes, stride=2 if stage > 0 and j == 0 else 1))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, n_classes)

    def forward(self, x):
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register_model("wrn_28_4")
def wrn_28_4(n_classes: int, in_channels: int, image_size: tuple[int, int], width: int = 16) -> nn.Module:
    return WideResNet(28, 4, n_classes, in_channels, base=width)


@register_model("wrn_34_10")
def wrn_34_10(n_classes: int, in_channels: int, image_size: tuple[int, int], width: int = 16) -> nn.Module:
    """WRN-34-10 of TRADES and LBGAT (the RobustBench zoo's `WideResNet(depth=34, widen_factor=10)`: the same
    pre-activation blocks, no input normalisation), the network PwoA prunes."""
    return WideResNet(34, 10, n_classes, in_channels, base=width)


def from_robustbench(state: dict) -> dict:
    """A state dict in the naming of RobustBench's (and TRADES') `WideResNet` -> ours: `block{s}.layer.{j}.*` ->
    `blocks.{n*(s-1)+j}.*`, `convShortcut` -> `shortcut`, the final `bn1` -> `bn`. `sub_block1.*` (a block
    LBGAT's and TRADES' checkpoints carry but whose forward never runs) is dropped; the blocks are the same
    pre-activation blocks, so the converted weights compute the same function."""
    per_stage = 1 + max((int(k.split(".")[2]) for k in state if k.startswith("block1.layer.")), default=-1)
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "sub_block1":
            continue
        if parts[0] in ("block1", "block2", "block3") and parts[1] == "layer":
            stage, j = int(parts[0][-1]) - 1, int(parts[2])
            rest = ["shortcut" if p == "convShortcut" else p for p in parts[3:]]
            key = ".".join(["blocks", str(stage * per_stage + j), *rest])
        elif parts[0] == "bn1":
            key = ".".join(["bn", *parts[1:]])
        out[key] = value
    return out
