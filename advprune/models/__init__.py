"""Model registry: `@register_model("name")` on a constructor, `build_model(name, ...)` to make one.

Every constructor takes `(n_classes, in_channels, image_size, **options)` and returns a model that maps
inputs in [0, 1] to logits; no normalisation outside the model (as in HYDRA/HARP and the AP benchmark).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    return sorted(_MODELS)


def build_model(name: str, n_classes: int, in_channels: int, image_size: tuple[int, int] | list[int], **options) -> nn.Module:
    if name not in _MODELS:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(list_models())}")
    return _MODELS[name](n_classes=n_classes, in_channels=in_channels, image_size=tuple(image_size), **options)


# Importing the modules fills the registry.
from advprune.models import mobilevit, resnet, small_cnn, vgg, wrn  # noqa: E402,F401
