"""A small CNN: three conv-BN-ReLU layers and a two-layer classifier, fast enough for CPU-only runs.
BatchNorm lets adversarial training from scratch get going within a few epochs."""

import torch.nn as nn

from advprune.models import register_model


@register_model("small_cnn")
def small_cnn(n_classes: int, in_channels: int, image_size: tuple[int, int], width: int = 32) -> nn.Module:
    h, w = image_size
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * (h // 4) * (w // 4), 4 * width),
        nn.ReLU(inplace=True),
        nn.Linear(4 * width, n_classes),
    )
