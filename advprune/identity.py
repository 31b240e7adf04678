"""Whether a model checkpoint is the model a job expects, before the job uses it.

A results path names a model (`…/{dataset}/{arch}/seed{seed}/{method}/s{sparsity}/model.pt`) and the config
says what that is (models.<arch>, prune.methods.<method>.method). A checkpoint says what it is
(advprune.checkpoint.save_model: arch, model options, class count, input shape, the dataset and hash of the
prepared splits it was made on, and for a pruned model the method key, its implementation, the target and the
sparsity measured from its weights when it was pruned). A file put at another model's path (a narrower
network, another architecture, the dense model at a pruned model's path) or made on other splits would
otherwise be evaluated and reported as the model of its path.

Sparsity is compared with what the checkpoint recorded at prune time, not with the bare target: a structured
method may stop short of its target and says so. The weights are measured again, so an edited record cannot
make a dense network pass for a pruned one.
"""

from __future__ import annotations

import torch

from advprune.checkpoint import RECOMPUTE, SPARSITY_TOLERANCE, CheckpointError
from advprune.data import data_sha256
from advprune.models import build_model


def expected_identity(config: dict, arch: str | None, method: str, sparsity: float) -> dict:
    """What the path's wildcards (`arch`, `method` key or "dense", `sparsity`) and the config say the model
    is. `arch` None (a script run alone without --arch): architecture and options are not compared. A key of the
    config's `external` section names a checkpoint made elsewhere, read in by import_external with its own options."""
    external = (config.get("external") or {}).get(method)
    options = external["model"] if external else config["models"].get(arch, {})
    return {
        "arch": arch,
        "model_options": None if arch is None else dict(options),
        "method": method,
        "impl": None if method == "dense" else "external" if external else config["prune"]["methods"][method].get("method", method),
        "sparsity_target": float(sparsity) if method != "dense" else 0.0,
        "include_first_last": config["prune"]["include_first_last"],
    }


def dense_identity(expected: dict) -> dict:
    """The dense model a prune job starts from, for the path and config of its output."""
    return {**expected, "method": "dense", "impl": None, "sparsity_target": 0.0}


def _found(ckpt: dict) -> dict:
    pruning = ckpt.get("pruning") or {}
    return {"arch": ckpt["arch"], "model_options": ckpt["model_options"], "method": pruning.get("method", "dense"), "impl": pruning.get("impl"),
            "sparsity_target": float(pruning.get("sparsity_target", 0.0))}


def measured_sparsity(model, ckpt: dict, include_first_last: bool) -> float:
    """The fraction of the dense architecture's prunable weights the model no longer has (removed or zero),
    as the prune job measures it."""
    from advprune.models.weights import layer_sparsity

    dense = None
    if ckpt.get("structured"):
        with torch.device("meta"):  # only its shapes count: nothing allocated
            dense = build_model(ckpt["arch"], ckpt["n_classes"], ckpt["in_channels"], ckpt["image_size"], **ckpt["model_options"])
    rows = layer_sparsity(model, include_first_last, dense)
    return sum(r["sparsity"] * r["n_params"] for r in rows) / sum(r["n_params"] for r in rows)


def check_model(path, model, ckpt: dict, expected: dict | None, data_meta: dict) -> None:
    """Raise CheckpointError naming `path` and every difference when the checkpoint is not `expected`
    (expected_identity; None: only the data is compared) on the data of `data_meta` (meta.json)."""
    differences = []
    shape = {"n_classes": int(data_meta["n_classes"]), "in_channels": int(data_meta["channels"]), "image_size": list(data_meta["image_size"])}
    differences += [f"{key} {ckpt[key]!r} (the data: {value!r})" for key, value in shape.items() if ckpt[key] != value]
    data, now = ckpt.get("data"), {"dataset": data_meta.get("name"), "sha256": data_sha256(data_meta)}
    if data is not None and now["sha256"] is not None and data != now:
        differences.append(f"made on {data['dataset']} with the data {str(data['sha256'])[:12]} "
                           f"(the data now: {now['dataset']} {now['sha256'][:12]}: prepared with other splits or content)")
    if expected is not None:
        if "pruning" not in ckpt:
            differences.append("it does not record what it is (written by an older version)")
        found = _found(ckpt)
        keys = ["arch", "model_options", "method", "sparsity_target"] + ["impl"] * (found["method"] == expected["method"])
        differences += [f"{key} {found[key]!r} (the path and config: {expected[key]!r})"
                        for key in keys if expected.get(key) is not None and found[key] != expected[key]]
        if not differences:
            recorded = (ckpt.get("pruning") or {}).get("sparsity_measured", 0.0)
            measured = measured_sparsity(model, ckpt, expected["include_first_last"])
            if abs(measured - recorded) > SPARSITY_TOLERANCE:
                when = "recorded when it was pruned" if ckpt.get("pruning") else "for a dense model"
                differences.append(f"measured sparsity {measured:.3f} of its weights, {recorded:.3f} {when}")
    if differences:
        raise CheckpointError(path, "not the model this job expects: " + ", ".join(differences), RECOMPUTE)
