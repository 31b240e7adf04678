"""Checkpoints: written atomically (temp file + fsync + rename, so a kill never leaves a torn file) and read
with `weights_only=True` (no pickled code is executed on load).

A model checkpoint holds everything to rebuild the network without the config:
{"format", "arch", "model_options", "n_classes", "in_channels", "image_size", "state_dict", "masks", "meta",
"structured", "data", "pruning"}. `data` ({dataset, sha256}: advprune.data.data_sha256) and `pruning` ({method
key, impl, sparsity_target, sparsity_measured}, None for a dense model) say what the model is, for
advprune.identity to compare with what a job's path and config expect. `structured` marks a network whose
channels were physically removed (structured pruning): its layers are narrower than the architecture's, so
loading builds the dense architecture, resizes every Conv2d, BatchNorm and Linear to the saved shapes, then
loads the weights (no pickled modules). Checkpoints written before the flag existed read as not structured.

Every checkpoint is read through `load_torch`: a file that cannot be read raises CheckpointError naming the file
and what is wrong with it (empty, truncated, not a checkpoint, or holding pickled code), never torch's bare
EOFError, OSError or KeyError.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

FORMAT = 1
ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive
# Trained weights are never exactly zero, and fine-tuning keeps masked ones at zero: a model's measured sparsity
# is the one recorded when it was pruned (0 for a dense model) up to a few weights (advprune.identity).
SPARSITY_TOLERANCE = 1e-3


class CheckpointError(ValueError):
    """A checkpoint, or a results file another job wrote (advprune.entry.read_json/read_csv), that cannot be used:
    its path, what is wrong with it, and what to do about it."""

    def __init__(self, path, reason: str, remedy: str = ""):
        super().__init__(f"{path}: {reason}" + (f" ({remedy})" if remedy else ""))
        self.path, self.reason = str(path), reason


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call `write(tmp_path)` then move the finished file into place in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_torch(path: str | os.PathLike, map_location="cpu") -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            raise CheckpointError(path, "refused: it holds pickled objects, not only tensors and plain containers (read with weights_only=True)") from error
        raise CheckpointError(path, _unreadable(path), RECOMPUTE) from error
    except Exception as error:  # torch reports a torn file as EOFError, OSError, RuntimeError or KeyError
        raise CheckpointError(path, _unreadable(path), RECOMPUTE) from error


RECOMPUTE = "delete it and re-run to recompute it"


def _unreadable(path) -> str:
    """Why a file that torch could not load is not a usable checkpoint."""
    with open(path, "rb") as fh:
        head = fh.read(len(ZIP_MAGIC))
    if not head:
        return "empty file, not a checkpoint"
    if head == ZIP_MAGIC:
        return "truncated or corrupt checkpoint, its zip archive cannot be read"
    return "not a torch checkpoint"


def write_json(obj: Any, path: str | os.PathLike) -> None:
    def write(tmp):
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2)  # insertion order: e.g. attacks in the order they ran
            fh.write("\n")

    atomic_write(path, write)


def build_dense(ckpt: dict, device="cpu") -> nn.Module:
    """The checkpoint's architecture at full width, freshly initialised (the dense reference of a pruned model)."""
    from advprune.models import build_model

    return build_model(ckpt["arch"], ckpt["n_classes"], ckpt["in_channels"], ckpt["image_size"], **ckpt["model_options"]).to(device)


def save_model(path, model: nn.Module, arch: str, model_options: dict, data_meta: dict, masks: dict | None = None, meta: dict | None = None,
               pruning: dict | None = None) -> None:
    """`structured` is detected, not passed: a model whose tensors differ in shape from the architecture's (built
    on the meta device, so nothing is allocated) had channels removed; any script re-saving a loaded smaller
    model (fine-tuning) keeps the flag without knowing about it. `data_meta` is the prepared dataset's meta.json
    (its hash becomes `data`); `pruning` what the prune job made of it (None: dense)."""
    from advprune.data import data_sha256
    from advprune.models import build_model

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with torch.device("meta"):
        dense = build_model(arch, int(data_meta["n_classes"]), int(data_meta["channels"]), list(data_meta["image_size"]), **model_options)
    dense = dense.state_dict()
    structured = any(k in dense and dense[k].shape != v.shape for k, v in state.items())
    save_torch(
        {
            "format": FORMAT,
            "arch": arch,
            "model_options": dict(model_options),
            "n_classes": int(data_meta["n_classes"]),
            "in_channels": int(data_meta["channels"]),
            "image_size": list(data_meta["image_size"]),
            "state_dict": state,
            "masks": None if masks is None else {k: v.detach().cpu().bool() for k, v in masks.items()},
            "meta": meta or {},
            "structured": structured,
            "data": {"dataset": data_meta.get("name"), "sha256": data_sha256(data_meta)} if data_sha256(data_meta) else None,
            "pruning": None if pruning is None else dict(pruning),
        },
        path,
    )


def load_model(path, device="cpu") -> tuple[nn.Module, dict]:
    """Rebuild the network from a checkpoint; returns (model on `device`, the checkpoint dict)."""
    ckpt = load_torch(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(path, f"not a model checkpoint of this project (format {found!r}, expected {FORMAT})")
    model = build_dense(ckpt)
    if ckpt.get("structured", False):
        resize_to_state_dict(model, ckpt["state_dict"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device), ckpt


def resize_to_state_dict(model: nn.Module, state_dict: dict) -> None:
    """Give every Conv2d, BatchNorm and Linear of `model` the tensor shapes (and channel/feature counts) of
    `state_dict`, with uninitialised values that load_state_dict then overwrites."""
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
            for key, tensor in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
                saved = state_dict.get(prefix + key)
                if saved is not None and saved.shape != tensor.shape:
                    resized = torch.empty(saved.shape, dtype=tensor.dtype)
                    if isinstance(tensor, nn.Parameter):
                        setattr(m, key, nn.Parameter(resized, requires_grad=tensor.requires_grad))
                    else:
                        setattr(m, key, resized)
        if isinstance(m, nn.Conv2d):
            if m.groups > 1:  # depthwise: one filter per channel, however many remain
                m.groups = m.weight.shape[0]
            m.out_channels, m.in_channels = m.weight.shape[0], m.weight.shape[1] * m.groups
        elif isinstance(m, nn.Linear):
            m.out_features, m.in_features = m.weight.shape
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.num_features = len(m.running_mean) if m.running_mean is not None else len(m.weight)


# Wrappers and prefixes of plain state dicts as RobustBench stores them (DataParallel's 'module.', a wrapper's
# 'model.'); RobustBench's load_model strips the same two.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
PREFIXES = ("module.", "model.")
NORMALISATION_KEYS = ("mu", "sigma", "normalize.mean", "normalize.std", "mean", "std")


def plain_state_dict(obj, path) -> dict[str, torch.Tensor]:
    """The tensors of a plain checkpoint: unwrapped from {'state_dict': ...} (or 'model_state_dict', 'model'),
    without 'module.'/'model.' prefixes."""
    for key in STATE_DICT_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(path, "neither a checkpoint of this project nor a plain state dict (parameter name -> tensor)")
    state = {}
    for key, value in obj.items():
        for prefix in PREFIXES:
            key = key.removeprefix(prefix)
        state[key] = value
    return state


def load_start_model(path, arch: str, model_options: dict, data_meta: dict, device="cpu") -> tuple[nn.Module, dict]:
    """The dense model to start from (pretrain.checkpoint / pretrain.robustbench), as architecture `arch` on the
    dataset of `data_meta`: a dense checkpoint of ours, or a plain state dict of that architecture (for the
    Wide ResNets also in RobustBench's `WideResNet` naming, advprune.models.wrn.from_robustbench). Returns
    (model, {"format": "advprune" | "state_dict", "sha256": of the file}). Anything that does not fit exactly
    (other architecture, width, number of classes, an input-normalisation layer) is a CheckpointError."""
    from advprune.models import build_model
    from advprune.models.wrn import from_robustbench

    obj = load_torch(path)
    shape = {"n_classes": int(data_meta["n_classes"]), "in_channels": int(data_meta["channels"]), "image_size": list(data_meta["image_size"])}
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        found = {"arch": obj["arch"], "model_options": obj["model_options"], **{k: obj[k] for k in shape}}
        wanted = {"arch": arch, "model_options": dict(model_options), **shape}
        if found != wanted:
            diff = ", ".join(f"{k} {found[k]!r} (the run: {wanted[k]!r})" for k in wanted if found[k] != wanted[k])
            raise CheckpointError(path, f"a checkpoint of another network: {diff}")
        if obj.get("structured") or obj.get("masks") is not None:
            raise CheckpointError(path, "a pruned checkpoint: the start must be the dense model")
        _warn_other_data(path, obj.get("data"), data_meta)
        model, _ = load_model(path, device)
        _refuse_sparse_start(path, model)
        return model, {"format": "advprune", "sha256": file_sha256(path)}
    state = plain_state_dict(obj, path)
    refuse_normalisation(state, path, arch)
    model = build_model(arch, shape["n_classes"], shape["in_channels"], shape["image_size"], **model_options)
    if arch.startswith("wrn_") and not set(state) <= set(model.state_dict()):
        state = from_robustbench(state)
    load_strict(model, state, path, f"{arch} {model_options or ''} for {shape['n_classes']} classes")
    _refuse_sparse_start(path, model)
    return model.to(device), {"format": "state_dict", "sha256": file_sha256(path)}


def refuse_normalisation(state: dict, path, arch: str) -> None:
    normalisation = sorted(k for k in state if k in NORMALISATION_KEYS)
    if normalisation:
        raise CheckpointError(path, f"the network normalises its inputs inside ({', '.join(normalisation)}); "
                                    f"{arch} takes [0, 1] inputs without a normalisation layer, so these weights would see other inputs "
                                    "than they were trained on")


def load_strict(model: nn.Module, state: dict, path, network: str) -> None:
    """Load `state` into `model` with every key and shape matching both ways; otherwise a CheckpointError naming
    a few of the missing, unexpected and mis-shaped keys (never a model with some weights left at their init)."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in set(state) & set(own) if state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        listed = lambda keys: ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")  # noqa: E731
        problems = [f"missing {listed(missing)}"] * bool(missing) + [f"unexpected {listed(unexpected)}"] * bool(unexpected)
        problems += [f"other shapes for {listed(sorted(wrong))}"] * bool(wrong)
        raise CheckpointError(path, f"not a state dict of {network}: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)


def _refuse_sparse_start(path, model: nn.Module) -> None:
    """Every job after pretraining takes the dense model to have no zero weights (advprune.identity): a pruned
    network given as the start is refused here, where the config names it, not at every later job."""
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    zero = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    if zero > SPARSITY_TOLERANCE:
        raise CheckpointError(path, f"{100 * zero:.1f} % of its conv and linear weights are zero: the start must be the dense model")


def _warn_other_data(path, data: dict | None, data_meta: dict) -> None:
    """A start checkpoint of ours made on other splits is the user's choice (a model trained elsewhere), but its
    training set may hold this run's validation or test points: said in the job's log."""
    import logging

    from advprune.data import data_sha256

    now = data_sha256(data_meta)
    if data is not None and now is not None and data["sha256"] != now:
        logging.getLogger(__name__).warning("%s was trained on %s data %s, not on this run's %s %s: its training set may hold this run's "
                                            "validation or test points", path, data["dataset"], data["sha256"][:12], data_meta.get("name"), now[:12])


def file_sha256(path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
