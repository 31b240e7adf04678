"""Our state-dict names <-> the names the field gives the same tensors.

HYDRA (inspire-group/hydra, models/), HARP (intellisec/harp, models/), the Adversarial Pruning benchmark
(models/base_resnet18.py, base_vgg16.py) and RobustBench share one naming per network:

- ResNet-18 (CIFAR stem): kuangliu/pytorch-cifar's `conv1, bn1, layer{1-4}.{0,1}.{conv1,bn1,conv2,bn2,shortcut.{0,1}},
  linear`, which is ours (advprune.models.resnet);
- VGG-16-bn (HYDRA's `vgg16_bn`, the benchmark's `base_vgg16`): `features.{i}` for the 13 convs and their
  BatchNorms, indexed in the Sequential of cfg "16" (convs, BN, ReLU and four max pools), and `classifier.{0,2,4}`
  for the three Linear layers. Ours is one flat Sequential; on inputs too small for every pool (8x8 digits) it
  has fewer pools, so the map goes by layer order, not by index;
- Wide ResNets: TRADES' `block{s}.layer.{j}` naming (advprune.models.wrn.from_robustbench).
"""

from __future__ import annotations

import torch.nn as nn

# cfg "16" of HYDRA's models/vgg_cifar.py (and the benchmark's base_vgg16): channels, "M" = max pool
_VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
# archs whose field naming maps both ways
MAPPED = ("resnet18", "vgg16_bn")


class NamingError(ValueError):
    pass


def _vgg16_field_modules() -> list[str]:
    names, index = [], 0
    for item in _VGG16_CFG:
        if item == "M":
            index += 1
            continue
        names += [f"features.{index}", f"features.{index + 1}"]  # conv, BatchNorm (the ReLU has no tensors)
        index += 3
    return names + ["classifier.0", "classifier.2", "classifier.4"]


def field_module_names(model: nn.Module, arch: str) -> dict[str, str]:
    """Our module name -> the field's, for every module of `model` (architecture `arch`) that holds tensors."""
    if arch not in MAPPED:
        raise NamingError(f"{arch} has no counterpart among the field's base models (they are {', '.join(MAPPED)})")
    ours = [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm))]
    if arch == "resnet18":
        return {name: name for name in ours}
    theirs = _vgg16_field_modules()
    if len(ours) != len(theirs):
        raise NamingError(f"vgg16_bn with {len(ours)} conv, BatchNorm and linear layers, the field's VGG-16-bn has {len(theirs)}")
    return dict(zip(ours, theirs))


def _rename(state: dict, modules: dict[str, str]) -> dict:
    """Keys `<module>.<tensor>` with their module renamed; keys of other modules are kept (a strict load names them)."""
    out = {}
    for key, value in state.items():
        module, _, tensor = key.rpartition(".")
        out[f"{modules[module]}.{tensor}" if module in modules else key] = value
    return out


def to_field(state: dict, model: nn.Module, arch: str) -> dict:
    """Our state dict of `model` in the field's names."""
    return _rename(state, field_module_names(model, arch))


def from_field(state: dict, model: nn.Module, arch: str) -> dict:
    """A state dict in the field's names (HYDRA's score tensors included: `popup_scores`, `k_score` sit beside
    the weight of their layer) in the names of our `model`."""
    if arch.startswith("wrn_"):
        from advprune.models.wrn import from_robustbench

        return from_robustbench(state)
    if arch not in MAPPED:
        return dict(state)
    return _rename(state, {field: ours for ours, field in field_module_names(model, arch).items()})
