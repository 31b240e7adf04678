"""MobileViT (v1) xxs / xs / s, after Mehta & Rastegari 2022 ("MobileViT: Light-weight, General-purpose, and
Mobile-friendly Vision Transformer", ICLR), our own module rather than timm's.

Why not timm (1.0.31, checked with the pinned torch): timm's `mobilevit_xxs` runs on 32x32 inputs, but with the
ImageNet stem its transformer blocks see 4x4, 2x2 and 1x1 maps, and it runs attention as one fused qkv Linear
reshaped into heads: Torch-Pruning's groups treat that Linear's 3·d outputs as plain channels, and removing some
breaks the reshape into heads (remove_channels on it fails with "shape ... is invalid"). Here every head has
its own query, key and value projections, so the generic groups of advprune.pruning._structured cover attention
too: one head dimension (query, key and value channel i of a head, with the output projection's input i), the
MLP's hidden units, and every convolution's channels; the smaller network computes what the masked one
computes. The attention scale stays that of the dense head width, so removing a head dimension removes exactly
its term of the dot products.

Layout (paper, Table 4 and §B): stem conv3×3 → MV2 → 3 MV2 (stride 2 first) → [MV2 stride 2 → MobileViT
block] × 3 → conv1×1 → global pool → linear; MV2 = MobileNetV2 inverted residual (expansion 4, 2 for xxs);
MobileViT block = conv3×3, conv1×1 to d, unfold into 2×2 patches, L transformer layers (pre-LayerNorm, 4
heads, MLP 2d, SiLU) over the patches of each pixel position, fold, conv1×1 back, concatenate with the input,
conv3×3. Inputs are in [0, 1], no normalisation.

Small inputs (deviation, as CIFAR adaptations of MobileNets do): the paper's stem has stride 2 (output stride
32 at 256×256); for inputs of 64×64 or less the stem has stride 1, so 32×32 inputs reach the MobileViT blocks at
8×8, 4×4, 2×2 (64×64: 16, 8, 4). A block whose map is smaller than 2 pixels (tiny test inputs) uses 1×1 patches.

`width` is the stem's channel count (16 in the paper); every channel count scales with width / 16 (the
transformer widths stay multiples of the 4 heads), so rehearsals and tests can run a narrow network.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from advprune.models import register_model

HEADS = 4
# per size: (channels of the stem, MV2 layer 1, layer 2, layers 3-5 and the final conv), transformer widths d
# of layers 3-5, and the MV2 expansion (paper, Table 4)
SIZES = {
    "xxs": ((16, 16, 24, 48, 64, 80, 320), (64, 80, 96), 2),
    "xs": ((16, 32, 48, 64, 80, 96, 384), (96, 120, 144), 4),
    "s": ((16, 32, 64, 96, 128, 160, 640), (144, 192, 240), 4),
}
DEPTHS = (2, 4, 3)  # transformer layers L of layers 3-5


def conv_bn(c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, nn.SiLU()) if act else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: expand (1×1), depthwise 3×3, project (1×1, no activation); residual when shapes allow."""

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int):
        super().__init__()
        hidden = c_in * expansion
        self.expand = conv_bn(c_in, hidden)
        self.depthwise = conv_bn(hidden, hidden, 3, stride, groups=hidden)
        self.project = conv_bn(hidden, c_out, act=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.residual else out


class Head(nn.Module):
    def __init__(self, dim: int, head_dim: int):
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(dim, head_dim) for _ in range(3))
        self.scale = head_dim ** -0.5  # the dense width's: fixed when query/key pairs are removed

    def forward(self, x):
        scores = self.query(x) @ self.key(x).transpose(-2, -1) * self.scale
        return scores.softmax(-1) @ self.value(x)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = nn.ModuleList(Head(dim, dim // heads) for _ in range(heads))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        return self.proj(torch.cat([head(x) for head in self.heads], -1))


class TransformerLayer(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.silu(self.fc1(self.norm2(x))))


class MobileViTBlock(nn.Module):
    def __init__(self, channels: int, dim: int, depth: int, patch: int):
        super().__init__()
        self.local = conv_bn(channels, channels, 3)
        self.to_tokens = nn.Conv2d(channels, dim, 1, bias=False)
        self.transformer = nn.Sequential(*(TransformerLayer(dim, HEADS) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.from_tokens = conv_bn(dim, channels)
        self.fuse = conv_bn(2 * channels, channels, 3)
        self.patch = patch

    def forward(self, x):
        y = self.to_tokens(self.local(x))
        b, d, h, w = y.shape
        p = self.patch
        # (B, d, H, W) -> (B·p·p, N, d): attention runs across patches, between pixels at the same patch position
        tokens = y.reshape(b, d, h // p, p, w // p, p).permute(0, 3, 5, 2, 4, 1).reshape(b * p * p, (h // p) * (w // p), d)
        tokens = self.norm(self.transformer(tokens))
        y = tokens.reshape(b, p, p, h // p, w // p, d).permute(0, 5, 3, 1, 4, 2).reshape(b, d, h, w)
        return self.fuse(torch.cat([x, self.from_tokens(y)], 1))


class MobileViT(nn.Module):
    def __init__(self, size: str, n_classes: int, in_channels: int, image_size: tuple[int, int], width: int = 16):
        super().__init__()
        channels, dims, expansion = SIZES[size]
        c = [max(1, round(ch * width / 16)) for ch in channels]
        dims = [max(HEADS, round(d * width / 16 / HEADS) * HEADS) for d in dims]
        stem_stride = 2 if min(image_size) > 64 else 1
        self.stem = conv_bn(in_channels, c[0], 3, stem_stride)
        self.layer1 = InvertedResidual(c[0], c[1], 1, expansion)
        self.layer2 = nn.Sequential(*(InvertedResidual(c[1] if i == 0 else c[2], c[2], 2 if i == 0 else 1, expansion) for i in range(3)))
        size_at = math.ceil(min(image_size) / stem_stride / 2)  # map side after layer2
        stages = []
        for i, (dim, depth) in enumerate(zip(dims, DEPTHS)):
            size_at = math.ceil(size_at / 2)
            patch = 2 if size_at >= 2 and size_at % 2 == 0 else 1
            stages.append(nn.Sequential(InvertedResidual(c[2 + i], c[3 + i], 2, expansion), MobileViTBlock(c[3 + i], dim, depth, patch)))
        self.layer3, self.layer4, self.layer5 = stages
        self.head = conv_bn(c[5], c[6])
        self.fc = nn.Linear(c[6], n_classes)

    def forward(self, x):
        x = self.layer5(self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x))))))
        return self.fc(F.adaptive_avg_pool2d(self.head(x), 1).flatten(1))


def _register(size: str):
    @register_model(f"mobilevit_{size}")
    def build(n_classes: int, in_channels: int, image_size: tuple[int, int], width: int = 16) -> nn.Module:
        return MobileViT(size, n_classes, in_channels, image_size, width)

    build.__doc__ = f"MobileViT-{size.upper()} (Mehta & Rastegari 2022)."
    return build


for _size in SIZES:
    _register(_size)
