"""Run configuration: loading, validation against workflow/schemas/, and the slice of it each stage uses.

The Snakefile and the entry scripts' CLIs both take their settings from here, so a job's params are exactly
the config keys that stage depends on: changing one value re-runs only the jobs that read it.
Light on purpose (no torch): the Snakefile imports it while building the DAG.
"""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import yaml

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "workflow" / "schemas"


class ConfigError(ValueError):
    """One line naming the offending key."""


def _path(error: jsonschema.ValidationError) -> str:
    out = ""
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _fill_defaults(instance, schema, root):
    """Insert schema `default`s for missing keys (recursing through $ref/allOf and nested objects)."""
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        _fill_defaults(instance, target, root)
    for sub in schema.get("allOf", []):
        _fill_defaults(instance, sub, root)
    if isinstance(instance, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in instance and "default" in sub:
                instance[key] = copy.deepcopy(sub["default"])
            if key in instance:
                _fill_defaults(instance[key], sub, root)


def _check(instance, schema, prefix: str = "") -> None:
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(instance))
    if error is None:
        return
    key, message = _path(error), error.message
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        # Name the unknown key itself, not its parent.
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        key = extra[0] if key == "<top level>" else f"{key}.{extra[0]}"
        message = f"unknown key (allowed: {', '.join(error.schema.get('properties', {}))})"
    key = f"{prefix}.{key}" if prefix and key != "<top level>" else (prefix or key)
    raise ConfigError(f"config key '{key}': {message}")


def validate(config: dict) -> dict:
    """Validate in place, fill defaults, and return the config; raises ConfigError naming the bad key."""
    schema = yaml.safe_load((SCHEMA_DIR / "config.schema.yaml").read_text())
    _check(config, schema)
    _fill_defaults(config, schema, schema)
    method_schemas = method_option_schemas()
    for key, spec in config["prune"]["methods"].items():
        name = spec.get("method", key)
        if name not in method_schemas:
            raise ConfigError(f"config key 'prune.methods.{key}': unknown pruning method {name!r} (known: {', '.join(sorted(method_schemas))})")
        if "finetune" in spec:
            _check(spec["finetune"], {**schema["$defs"]["finetune_override"], "$defs": schema["$defs"]}, f"prune.methods.{key}.finetune")
        _check({k: v for k, v in spec.items() if k != "finetune"}, method_schemas[name], f"prune.methods.{key}")
        _fill_defaults(spec, method_schemas[name], method_schemas[name])
    _check_studies(config)
    return config


def _check_studies(config: dict) -> None:
    """Studies name methods by their key in prune.methods."""
    methods = config["prune"]["methods"]
    studies = config["studies"]
    for i, key in enumerate(studies.get("finetune", {}).get("methods", [])):
        if key not in methods:
            raise ConfigError(f"config key 'studies.finetune.methods[{i}]': {key!r} is not a key of prune.methods ({', '.join(methods)})")
    key = studies.get("objectives", {}).get("method")
    if key is not None and key not in methods:
        raise ConfigError(f"config key 'studies.objectives.method': {key!r} is not a key of prune.methods ({', '.join(methods)})")


def method_option_schemas() -> dict[str, dict]:
    """Method name -> the schema of its options: one file per method, beside its module in advprune/pruning/."""
    return {path.name.removesuffix(".schema.yaml"): yaml.safe_load(path.read_text()) for path in sorted((SCHEMA_DIR / "methods").glob("*.schema.yaml"))}


def load_config(path: str | Path) -> dict:
    with open(path) as fh:
        config = yaml.safe_load(fh)
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: not a YAML mapping")
    return validate(config)


def fmt_sparsity(sparsity: float) -> str:
    """Sparsity as it appears in paths: 0.5 -> '0.5', 0.99 -> '0.99'."""
    return f"{float(sparsity):g}"


# --- the settings each stage depends on (its Snakemake params) -------------------------------------------
# Snakemake compares params by their printed form: keys are sorted so that reordering the YAML changes nothing.

def _canonical(value):
    if isinstance(value, dict):
        return {k: _canonical(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def fetch_params(config: dict, dataset: str) -> dict:
    data = config["data"]
    return _canonical({
        "raw_dir": str(Path(data["raw_root"]) / dataset),
        "out_dir": str(Path(data["root"]) / dataset),
        "val_fraction": data["val_fraction"],
        "split_seed": data["split_seed"],
        "download": data["download"],
    })


def _training(config: dict, section: str, override: dict | None = None) -> dict:
    cfg = {**config[section], **(override or {})}
    objective = cfg.get("objective") or config["pretrain"]["objective"]
    out = {k: cfg[k] for k in ("epochs", "batch_size", "lr", "momentum", "weight_decay", "schedule")}
    out["objective"] = objective
    out["attack"] = cfg.get("attack") or config["pretrain"]["attack"]
    if objective == "trades":
        out["trades_beta"] = cfg.get("trades_beta", config["pretrain"]["trades_beta"])
    if objective == "mart":
        out["mart_beta"] = cfg.get("mart_beta", config["pretrain"]["mart_beta"])
    return out


def pretrain_params(config: dict, arch: str, objective: str | None = None) -> dict:
    """`objective` replaces the pretraining objective (the objectives study)."""
    train = _training(config, "pretrain", {"objective": objective} if objective else None)
    return _canonical({"model": config["models"].get(arch, {}), "threat_model": config["threat_model"], "train": train, "device": config["device"],
                       "fast_path": config["fast_path"]})


def sensitivity_params(config: dict) -> dict:
    return _canonical({"threat_model": config["threat_model"], "sensitivity": config["sensitivity"], "include_first_last": config["prune"]["include_first_last"], "device": config["device"]})


def method_spec(config: dict, key: str) -> dict:
    """The options the method is built with (its fine-tuning override belongs to the finetune stage)."""
    spec = {k: v for k, v in config["prune"]["methods"][key].items() if k != "finetune"}
    spec.setdefault("method", key)
    return spec


def prune_params(config: dict, key: str, pretrain_objective: str | None = None) -> dict:
    return _canonical({
        "method": method_spec(config, key),
        "include_first_last": config["prune"]["include_first_last"],
        "threat_model": config["threat_model"],
        "objective": _training(config, "pretrain", {"objective": pretrain_objective} if pretrain_objective else None),
        "device": config["device"],
        "fast_path": config["fast_path"],
    })


FINETUNE_MODES = ("none", "natural", "adversarial")


def finetune_params(config: dict, key: str | None = None, mode: str | None = None, objective: str | None = None) -> dict:
    """Fine-tuning of method `key`: the finetune section, then the method's own `finetune` override; a study's
    `mode` (none | natural | adversarial = the finetune section's objective) or `objective` replaces both."""
    override = config["prune"]["methods"][key].get("finetune") if key else None
    if mode is not None:
        override = {"none": "none", "natural": {"objective": "natural"}, "adversarial": {}}[mode]
    if objective is not None:
        override = {"objective": objective}
    if override == "none":
        override = {"epochs": 0}
    return _canonical({"threat_model": config["threat_model"], "train": _training(config, "finetune", override), "device": config["device"],
                       "fast_path": config["fast_path"]})


def evaluate_params(config: dict) -> dict:
    return _canonical({"threat_model": config["threat_model"], "evaluate": config["evaluate"], "include_first_last": config["prune"]["include_first_last"], "device": config["device"]})
