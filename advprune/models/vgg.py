"""VGG-16 with batch norm in the HYDRA/HARP variant: 13 bias-free convs, four max pools (none after the last conv
block), a 2x2 adaptive average pool, FC 2048->256->256->classes, with `width` scaling the channel counts (64 = the
paper's). The same function and tensors as the AP benchmark's `base_vgg16` (inspire-group/hydra
models/vgg_cifar.py cfg "16"); only the names differ (one flat Sequential here, advprune.interop.benchmark maps them)."""

import torch.nn as nn

from advprune.models import register_model

_VGG16 = [1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8]


@register_model("vgg16_bn")
def vgg16_bn(n_classes: int, in_channels: int, image_size: tuple[int, int], width: int = 64) -> nn.Module:
    layers: list[nn.Module] = []
    channels = in_channels
    h, w = image_size
    for item in _VGG16:
        if item == "M":
            # Small inputs (digits: 8x8) run out of resolution before the fourth pool; skip pools at 1x1.
            if h > 1 and w > 1:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            continue
        layers += [nn.Conv2d(channels, item * width, 3, padding=1, bias=False), nn.BatchNorm2d(item * width), nn.ReLU(inplace=True)]
        channels = item * width
    return nn.Sequential(
        *layers,
        nn.AdaptiveAvgPool2d((2, 2)),
        nn.Flatten(),
        nn.Linear(channels * 4, 4 * width),
        nn.ReLU(inplace=True),
        nn.Linear(4 * width, 4 * width),
        nn.ReLU(inplace=True),
        nn.Linear(4 * width, n_classes),
    )
