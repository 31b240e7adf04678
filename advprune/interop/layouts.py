"""Checkpoints made elsewhere, read into one of our architectures so that they are evaluated like ours.

Layouts (what the file holds, written down from each project's code):

- `benchmark`: the AP benchmark's, `{'state_dict': ...}` or `{'net': ...}` in its base models' names
  (advprune.interop.naming), masks folded, structured models at the dense shapes;
- `hydra`: inspire-group/hydra's `checkpoint.pth.tar` / `model_best.pth.tar` (`{'epoch', 'arch', 'state_dict',
  'best_prec1', 'optimizer'}`), whose SubnetConv/SubnetLinear layers hold `<layer>.popup_scores` beside
  `<layer>.weight`, or its `--save-dense` export (`checkpoint_dense.pth.tar`: the same without scores, masks
  folded). The mask of a layer keeps all but the int((1 - k) * n) lowest |scores| (utils/model.py
  subnet_to_dense), k = 1 - the claimed sparsity (HYDRA's `--k`; the checkpoint does not hold it);
- `harp`: intellisec/harp's, the same plus `<layer>.k_score`: the layer keeps the rate
  r = sigmoid(k_score) * (1 - r_min) + r_min, r_min = alpha * k (models/layers.py, utils/utils.py
  rate_act_func; alpha is `--alpha`, default 0.1), of its weights by |score| (`prune_reg weight`) or of its
  input channels (`prune_reg channel`, one score per input channel: the fine-tuned checkpoints' layout). HARP's
  own dense export folds every layer at the global k and is not what its model computes: read the scores.
  A claimed sparsity of 0 is HARP's pretraining mode (every weight kept);
- `robustbench`: a RobustBench model-zoo file (`{'state_dict': ...}` or plain, 'module.'/'model.' prefixes),
  Wide ResNets in RobustBench's names;
- `state_dict`: a plain state dict in our names.

HYDRA's and HARP's input normalisation (`--normalize`, used for ImageNet) is a constant of their model classes,
not a tensor of their checkpoints: nothing in the file says whether a model was trained with it, so a checkpoint
from such a run must not be given here (its entry cannot be told apart; ours take [0, 1] inputs).

Every layout then loads strictly (advprune.checkpoint.load_strict: a missing, unexpected or mis-shaped tensor
is refused, never left at its initial value), a model that normalises its inputs inside is refused (ours take
[0, 1] inputs), the sparsity measured from the weights (the records' measure: zeros of the prunable weights,
`include_first_last` of the run) must be the claimed one within the tolerance, and channels that are exactly zero
everywhere are removed (advprune.interop.compact).
"""

from __future__ import annotations

import torch
import torch.nn as nn

LAYOUTS = ("benchmark", "hydra", "harp", "robustbench", "state_dict")
# the layouts in the field's names, and the architectures each has (the benchmark: its two base models)
FIELD_ARCHS = {"benchmark": ("resnet18", "vgg16_bn"), "hydra": ("resnet18", "vgg16_bn", "wrn_28_4", "wrn_34_10"),
               "harp": ("resnet18", "vgg16_bn", "wrn_28_4", "wrn_34_10"), "robustbench": ("resnet18", "wrn_28_4", "wrn_34_10")}
SCORES, RATE = "popup_scores", "k_score"


def _unwrap(obj, path) -> dict[str, torch.Tensor]:
    from advprune.checkpoint import plain_state_dict

    if isinstance(obj, dict) and isinstance(obj.get("net"), dict) and "state_dict" not in obj:  # the benchmark also reads 'net'
        obj = obj["net"]
    return plain_state_dict(obj, path)


def _kept(sparsity: float) -> float:
    """HYDRA's and HARP's k (fraction kept) as a user types it: 1 - 0.9 is 0.09999999999999998, `--k 0.1` is 0.1."""
    return round(1 - sparsity, 10)


def _keep_top(scores: torch.Tensor, n_pruned: int) -> torch.Tensor:
    """1 everywhere but at the n_pruned lowest scores (HYDRA's GetSubnet)."""
    mask = torch.ones(scores.numel(), dtype=scores.dtype)
    mask[scores.flatten().argsort(stable=True)[:n_pruned]] = 0
    return mask.view_as(scores)


def _weight_of(state: dict, key: str, path) -> str:
    from advprune.checkpoint import CheckpointError

    weight = key.removesuffix(SCORES) + "weight"
    if weight not in state:
        raise CheckpointError(path, f"{key} scores a layer without a weight ({weight} missing)")
    return weight


def fold_hydra(state: dict, sparsity: float, path) -> dict:
    """HYDRA's scores folded into the weights: each layer keeps its top k by |score|."""
    out = {key: value for key, value in state.items() if not key.endswith(SCORES)}
    k = _kept(sparsity)
    for key in [key for key in state if key.endswith(SCORES)]:
        weight, scores = _weight_of(state, key, path), state[key].abs()
        out[weight] = state[weight] * _keep_top(scores, int((1 - k) * scores.numel())).to(state[weight].dtype)
    return out


def fold_harp(state: dict, sparsity: float, alpha: float, path) -> dict:
    """HARP's scores and learned rates folded into the weights (see the module docstring)."""
    from advprune.checkpoint import CheckpointError

    out = {key: value for key, value in state.items() if not key.endswith((SCORES, RATE))}
    if sparsity == 0:
        return out
    k = _kept(sparsity)
    r_min = k * alpha
    for key in [key for key in state if key.endswith(SCORES)]:
        weight, scores = _weight_of(state, key, path), state[key].abs()
        rate_key = key.removesuffix(SCORES) + RATE
        if rate_key not in state:
            raise CheckpointError(path, f"{key} without its layer's rate {rate_key}: a HYDRA checkpoint? (layout hydra)")
        rate = torch.sigmoid(state[rate_key].float()) * (1 - r_min) + r_min  # rate_act_func, in its order of operations
        if scores.shape == state[weight].shape:
            mask = _keep_top(scores, int((1 - rate) * scores.numel()))
        elif scores.dim() >= 2 and scores.shape[0] == 1 and scores.shape[1] == state[weight].shape[1] and scores[0].numel() == scores.shape[1]:
            n_kept = int(torch.round(rate * scores.shape[1]))
            mask = torch.zeros_like(scores)
            mask[0, torch.topk(scores[0].flatten(), n_kept).indices] = 1
        else:
            raise CheckpointError(path, f"{key} of shape {tuple(scores.shape)}: neither one score per weight nor one per input channel "
                                        "(HARP's channel scores are read from its fine-tuned checkpoints)")
        out[weight] = state[weight] * mask.to(state[weight].dtype)
    return out


def measured_sparsity(model: nn.Module, include_first_last: bool) -> float:
    from advprune.models.weights import layer_sparsity

    layers = layer_sparsity(model, include_first_last)
    return sum(r["sparsity"] * r["n_params"] for r in layers) / sum(r["n_params"] for r in layers)


def read_external(path, layout: str, arch: str, model_options: dict, data_meta: dict, sparsity: float, include_first_last: bool,
                  tolerance: float, harp_alpha: float = 0.1) -> tuple[nn.Module, dict]:
    """The checkpoint at `path` (in `layout`) as our `arch` for the dataset of `data_meta`, and what was done to
    it: {layout, sha256, scores_folded, sparsity_claimed, sparsity_measured, channels_removed}. CheckpointError
    (one line naming the file) when it does not load strictly or its sparsity is not the claimed one."""
    from advprune.checkpoint import CheckpointError, file_sha256, load_strict, load_torch, refuse_normalisation
    from advprune.interop.compact import compact
    from advprune.interop.naming import from_field
    from advprune.models import build_model

    if layout in FIELD_ARCHS and arch not in FIELD_ARCHS[layout]:
        raise CheckpointError(path, f"layout {layout} has no {arch} (its networks: {', '.join(FIELD_ARCHS[layout])})")
    state = _unwrap(load_torch(path), path)
    refuse_normalisation(state, path, arch)
    model = build_model(arch, int(data_meta["n_classes"]), int(data_meta["channels"]), list(data_meta["image_size"]), **model_options)
    if layout in FIELD_ARCHS:
        state = from_field(state, model, arch)
    folded = None
    if any(key.endswith(SCORES) for key in state):
        if layout not in ("hydra", "harp"):
            raise CheckpointError(path, f"holds HYDRA/HARP score tensors ({SCORES}), not a {layout} checkpoint: give layout hydra or harp")
        state = fold_hydra(state, sparsity, path) if layout == "hydra" else fold_harp(state, sparsity, harp_alpha, path)
        folded = layout
    load_strict(model, state, path, f"{arch} {model_options or ''} for {data_meta['n_classes']} classes ({layout} layout)")
    measured = measured_sparsity(model, include_first_last)
    if abs(measured - sparsity) > tolerance:
        raise CheckpointError(path, f"claims sparsity {sparsity:g} but {measured:.4f} of its prunable weights are zero "
                                    f"(tolerance {tolerance:g}; include_first_last {include_first_last})")
    model.eval()
    example = torch.zeros(1, int(data_meta["channels"]), *data_meta["image_size"])
    model, removed = compact(model, example)
    info = {"layout": layout, "sha256": file_sha256(path), "scores_folded": folded, "sparsity_claimed": sparsity, "sparsity_measured": measured,
            "channels_removed": removed}
    return model, info
