"""Run configuration: loading, validation against workflow/schemas/, and the slice of it each stage uses.

The Snakefile and the entry scripts' CLIs both take their settings from here, so a job's params are exactly
the config keys that stage depends on: changing one value re-runs only the jobs that read it.
Light on purpose (no torch): the Snakefile imports it while building the DAG.
"""

from __future__ import annotations

import copy
import json
import math
import os
from decimal import Decimal
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


def _resolve(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        target = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        schema = target
    return schema


TYPE_NAMES = {"object": "a mapping", "array": "a list", "integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false"}


def _alternatives(schema: dict, root: dict) -> list[str]:
    """What a schema admits, in words: its values (enum, const, null) or its kind (a mapping, a number, ...),
    through oneOf/anyOf."""
    schema = _resolve(schema, root)
    if "enum" in schema:
        return [_as_yaml(v) for v in schema["enum"]]
    if "const" in schema:
        return [_as_yaml(schema["const"])]
    if schema.get("type") == "null":
        return ["null"]
    branches = schema.get("oneOf") or schema.get("anyOf")
    if branches:
        return [text for branch in branches for text in _alternatives(branch, root)]
    return [TYPE_NAMES.get(schema.get("type"), "something else")]


def _as_yaml(value) -> str:
    """A scalar as it is written in the config file (null, true, false)."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


# JSON Schema counts 5.0 as an integer; a float where a count is meant breaks later (a slice of 50.0 examples, the path
# seed1.0 that no rule matches), so an integer is an int here.
_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool)),
)


def _first_error(instance, schema) -> tuple[str, str] | None:
    """(key, message) of the most relevant schema violation, or None."""
    error = jsonschema.exceptions.best_match(_Validator(schema).iter_errors(instance))
    if error is None:
        return None
    key, message = _path(error), error.message
    if error.validator in ("enum", "oneOf", "anyOf"):
        message = f"{error.instance!r} is not one of: {', '.join(_alternatives(error.schema, schema))}"
    if "propertyNames" in error.schema_path:  # a bad key name: name the key itself, a newline in it escaped
        key = f"{key}.{str(error.instance).encode('unicode_escape').decode()}"
    if error.validator == "not" and error.validator_value == {"const": "dense"}:
        message = "the name 'dense' is reserved for the unpruned model's records: give the method another key"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        # Name the unknown key itself, not its parent.
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        key = extra[0] if key == "<top level>" else f"{key}.{extra[0]}"
        message = f"unknown key (allowed: {', '.join(error.schema.get('properties', {}))})"
    return key, message


def _check(instance, schema, prefix: str = "") -> None:
    found = _first_error(instance, schema)
    if found is None:
        return
    key, message = found
    key = f"{prefix}{'' if key.startswith('[') else '.'}{key}" if prefix and key != "<top level>" else (prefix or key)
    raise ConfigError(f"config key '{key}': {message}")


# libyaml's parser where PyYAML has it: the pure-Python one took ~0.7 s of every job's start reading the schemas
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_yaml(path: Path):
    return yaml.load(path.read_text(), Loader=_SAFE_LOADER)  # noqa: S506 (a SafeLoader)


def _schema() -> dict:
    return _read_yaml(SCHEMA_DIR / "config.schema.yaml")


def schema_error(value, *path) -> str | None:
    """Why `value` may not stand at `path` of a config (e.g. "prune", "sparsities", 0), or None if it may: the
    entry scripts check their command-line values against the schema the workflow uses."""
    schema = _schema()
    node = _schema_at(schema, path, schema)
    found = _first_error(value, {**node, "$defs": schema["$defs"]})
    return None if found is None else found[1]


def _schema_at(schema: dict, path: tuple, root: dict) -> dict | None:
    """The schema of the value at `path` (keys and list indices), or None where it cannot be told."""
    for part in path:
        schema = _resolve(schema, root)
        candidates = [schema, *(_resolve(s, root) for s in schema.get("allOf", []))]
        found = None
        for node in candidates:
            if isinstance(part, int) and isinstance(node.get("items"), dict):
                found = node["items"]
            elif not isinstance(part, int) and part in node.get("properties", {}):
                found = node["properties"][part]
            elif not isinstance(part, int) and isinstance(node.get("additionalProperties"), dict):
                found = found or node["additionalProperties"]
        if found is None:
            return None
        schema = found
    return _resolve(schema, root)


def _string_leaves(value, path: tuple = ()):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _string_leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _string_leaves(v, (*path, i))
    elif isinstance(value, str):
        yield path, value


def type_overrides(config: dict, overrides: dict) -> dict:
    """Give `--config` values the types they would have in a config file. Snakemake reads `key=value` with int,
    float and bool parsers, and lists and maps with YAML's BaseLoader, which keeps every scalar inside them a
    string (`seeds=[1]` becomes ['1']): each such string is read again as YAML, except where the schema wants a
    string. Edits `config` (which already holds the overrides) in place and returns it."""
    schema = _schema()
    for path, text in _string_leaves(overrides):
        node = _schema_at(schema, path, schema)
        if node is not None and node.get("type") == "string":
            continue
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            continue  # left as text: validation names the key
        target = config
        try:
            for part in path[:-1]:
                target = target[part]
            target[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    return config


# Sparsities name paths (s{sparsity}, see fmt_sparsity); a path component must stay readable.
SPARSITY_PATTERN = r"[0-9.]+"
SPARSITY_MAX_DECIMALS = 10


def _check_sparsities(config: dict) -> None:
    keys = [(f"prune.sparsities[{i}]", v) for i, v in enumerate(config["prune"]["sparsities"])]
    keys += [(f"prune.methods.{m}.sparsities[{i}]", v) for m, spec in config["prune"]["methods"].items() for i, v in enumerate(spec.get("sparsities", []))]
    keys += [(f"studies.{name}.sparsity", study["sparsity"]) for name, study in config["studies"].items() if "sparsity" in study]
    for key, value in keys:
        text = fmt_sparsity(value)
        if len(text.partition(".")[2]) > SPARSITY_MAX_DECIMALS:
            raise ConfigError(f"config key '{key}': {value!r} has more than {SPARSITY_MAX_DECIMALS} decimals (it names the directory s{text})")


def _check_finite(value, key: str = "") -> None:
    """YAML's .nan and .inf pass every schema bound (nan compares false with all of them)."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_finite(v, f"{key}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key '{key}': {value} is not a finite number")


def validate(config: dict) -> dict:
    """Validate in place, fill defaults, and return the config; raises ConfigError naming the bad key."""
    schema = _schema()
    _check_finite(config)
    _check(config, schema)
    _fill_defaults(config, schema, schema)
    method_schemas = method_option_schemas()
    for key, spec in config["prune"]["methods"].items():
        name = spec.get("method", key)
        if name not in method_schemas:
            raise ConfigError(f"config key 'prune.methods.{key}': unknown pruning method {name!r} (known: {', '.join(sorted(method_schemas))})")
        for option in PIPELINE_OPTIONS:
            if option in spec:
                _check(spec[option], {**schema["$defs"][PIPELINE_OPTIONS[option]], "$defs": schema["$defs"]}, f"prune.methods.{key}.{option}")
        _check({k: v for k, v in spec.items() if k not in PIPELINE_OPTIONS}, method_schemas[name], f"prune.methods.{key}")
        _fill_defaults(spec, method_schemas[name], method_schemas[name])
    _check_studies(config)
    _check_sparsities(config)
    _check_data_dirs(config)
    _check_start(config)
    _check_external(config, schema)
    return config


# Keys of a prune.methods entry that belong to the pipeline, not to the method (-> their schema in $defs): its own
# fine-tuning, and the target sparsities it runs at (default prune.sparsities).
PIPELINE_OPTIONS = {"finetune": "finetune_override", "sparsities": "sparsities"}


def method_sparsities(config: dict, key: str) -> list[float]:
    """The target sparsities method `key` is run at in the main grid."""
    return config["prune"]["methods"][key].get("sparsities") or config["prune"]["sparsities"]


def _check_data_dirs(config: dict) -> None:
    """Data directories written the one way every path made from them is (`resources/data/` and `./resources/data`
    are `resources/data`: the rules' file patterns and the paths the jobs are given must agree), refused when a
    file stands at them (or above them)."""
    for key in ("root", "raw_root"):
        config["data"][key] = os.path.normpath(config["data"][key])
        path = Path(config["data"][key])
        blocked = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocked is not None:
            raise ConfigError(f"config key 'data.{key}': {path} cannot be a directory, {blocked} is a file")


def _check_start(config: dict) -> None:
    for key in ("checkpoint", "robustbench"):
        if config["finetune"].get(key) is not None:
            raise ConfigError(f"config key 'finetune.{key}': only pretraining starts from a checkpoint (set pretrain.{key})")
    pretrain = config["pretrain"]
    if pretrain.get("checkpoint") is not None:
        try:
            pretrain["checkpoint"].format(dataset=config["datasets"][0], arch=config["archs"][0])
        except (KeyError, IndexError, AttributeError, ValueError) as error:
            raise ConfigError(f"config key 'pretrain.checkpoint': {pretrain['checkpoint']!r} is not a path template with only {{dataset}} "
                              f"and {{arch}} in braces ({type(error).__name__}: {error}; write a literal brace as {{{{ or }}}})") from None
    if pretrain.get("checkpoint") is not None and pretrain.get("robustbench") is not None:
        raise ConfigError("config key 'pretrain.robustbench': set either pretrain.checkpoint or pretrain.robustbench, not both")
    model = (pretrain.get("robustbench") or {}).get("model")
    if isinstance(model, dict):
        for dataset in config["datasets"]:
            if dataset not in model:
                raise ConfigError(f"config key 'pretrain.robustbench.model': no model named for dataset {dataset!r} (named: {', '.join(model)})")


def start_checkpoint(config: dict, dataset: str, arch: str) -> dict | None:
    """Where the dense model of (dataset, arch) comes from when it is not trained: {"path", "source", and for
    RobustBench "robustbench": {model, dataset, threat_model}}, or None (pretraining trains it)."""
    pretrain = config["pretrain"]
    if pretrain.get("checkpoint") is not None:
        return {"path": pretrain["checkpoint"].format(dataset=dataset, arch=arch), "source": "pretrain.checkpoint"}
    rb = pretrain.get("robustbench")
    if rb is None:
        return None
    name = rb["model"][dataset] if isinstance(rb["model"], dict) else rb["model"]
    zoo = {"model": name, "dataset": rb.get("dataset", dataset), "threat_model": rb.get("threat_model", "Linf")}
    path = Path(rb.get("root", "models")) / zoo["dataset"] / zoo["threat_model"] / f"{name}.pt"
    return {"path": str(path), "source": "pretrain.robustbench", "robustbench": zoo}


def missing_start_checkpoint(start: dict) -> str | None:
    """One line saying where to put a start checkpoint that is not there (downloads are the user's to make)."""
    if Path(start["path"]).is_file():
        return None
    if Path(start["path"]).is_dir():
        return f"config key '{start['source']}': {start['path']} is a directory: name the checkpoint file in it"
    if "robustbench" in start:
        zoo = start["robustbench"]
        root = Path(start["path"]).parents[2]
        return (f"config key '{start['source']}': {start['path']} not found: "
                f"put RobustBench's {zoo['model']!r} ({zoo['dataset']}, {zoo['threat_model']}) "
                f"checkpoint there (robustbench.utils.load_model({zoo['model']!r}, model_dir='{root}', dataset='{zoo['dataset']}', "
                f"threat_model='{zoo['threat_model']}') downloads it to that path)")
    return f"config key '{start['source']}': {start['path']} not found: put the dense checkpoint to start from there"


def check_start_checkpoints(config: dict) -> None:
    """Every (dataset, arch) of the run that starts from a checkpoint finds its file; raises ConfigError otherwise."""
    for dataset in config["datasets"]:
        for arch in config["archs"]:
            start = start_checkpoint(config, dataset, arch)
            missing = start and missing_start_checkpoint(start)
            if missing:
                raise ConfigError(missing)


def check_split_sizes(config: dict) -> None:
    """evaluate.n_examples no larger than the split it evaluates (the record's sample size would silently be the
    split's), where the dataset is already prepared with the run's split settings (otherwise its sizes are not
    known before the data job); raises ConfigError otherwise."""
    n, split = config["evaluate"]["n_examples"], config["evaluate"]["split"]
    for dataset in config["datasets"]:
        fetch = fetch_params(config, dataset)
        meta_path = Path(fetch["out_dir"]) / "meta.json"
        try:
            meta = json.loads(meta_path.read_text())
            size = meta["splits"][split] if (meta["val_fraction"], meta["split_seed"]) == (fetch["val_fraction"], fetch["split_seed"]) else None
        except (OSError, ValueError, KeyError, TypeError):  # not prepared yet, or damaged: the data job's concern
            continue
        if n is not None and size is not None and n > size:
            raise ConfigError(f"config key 'evaluate.n_examples': {n} is more than the {size} examples in the {split} split of {dataset} ({meta_path}; "
                              "null takes the whole split)")


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
    return {path.name.removesuffix(".schema.yaml"): _read_yaml(path) for path in sorted((SCHEMA_DIR / "methods").glob("*.schema.yaml"))}


class _UniqueKeyLoader(_SAFE_LOADER):
    """YAML that refuses a key given twice in one mapping (plain YAML keeps the last one silently: a second
    `prune:` section pasted below the first would replace it)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(problem=f"key {key!r} given twice in one mapping", problem_mark=key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeyLoader.construct_mapping)


def read_config_file(path: str | Path) -> dict:
    """The mapping in a config file; an unreadable file, invalid YAML, a key given twice or anything but a
    mapping raises ConfigError naming the file (and line)."""
    try:
        with open(path) as fh:
            config = yaml.load(fh, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except OSError as error:
        raise ConfigError(f"config file {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        raise ConfigError(f"config file {path}: not valid YAML{f' (line {where.line + 1})' if where else ''}: {getattr(error, 'problem', None) or error}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: not a YAML mapping")
    return config


def load_config(path: str | Path) -> dict:
    return validate(read_config_file(path))


def fmt_sparsity(sparsity: float) -> str:
    """Sparsity as it appears in paths (s{sparsity}): the shortest decimal that reads back as the same float, so
    distinct values get distinct paths, and never in exponent form, which the wildcard would not match
    (0.5 -> '0.5', 1e-05 -> '0.00001', 0.12345678 -> '0.12345678', 0 -> '0')."""
    return format(Decimal(repr(float(sparsity))).normalize(), "f")


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


def _training(config: dict, section: str, dataset: str, override: dict | None = None) -> dict:
    """A training section's settings, with the dataset's augmentation (it is part of how the model trains)."""
    cfg = {**config[section], **(override or {})}
    objective = cfg.get("objective") or config["pretrain"]["objective"]
    out = {k: cfg[k] for k in ("epochs", "batch_size", "lr", "momentum", "weight_decay", "schedule", "batchnorm", "keep", "epoch_steps")}
    out["objective"] = objective
    out["attack"] = cfg.get("attack") or config["pretrain"]["attack"]
    if objective == "trades":
        out["trades_beta"] = cfg.get("trades_beta", config["pretrain"]["trades_beta"])
    if objective == "mart":
        out["mart_beta"] = cfg.get("mart_beta", config["pretrain"]["mart_beta"])
    if objective in ("ibp", "crown_ibp"):
        out["eps_ramp_epochs"] = cfg.get("eps_ramp_epochs", config["pretrain"].get("eps_ramp_epochs", 0))
        out["kappa"] = cfg.get("kappa", config["pretrain"].get("kappa", 0.0))
    out["augmentation"] = config["data"]["augmentation"][dataset]
    return out


def pretrain_params(config: dict, arch: str, objective: str | None = None, *, dataset: str) -> dict:
    """`objective` replaces the pretraining objective (the objectives study, which trains even where the main
    pretraining starts from a checkpoint: `start`, see start_checkpoint)."""
    train = _training(config, "pretrain", dataset, {"objective": objective} if objective else None)
    params = {"model": config["models"].get(arch, {}), "threat_model": config["threat_model"], "train": train, "device": config["device"],
              "fast_path": config["fast_path"]}
    start = None if objective else start_checkpoint(config, dataset, arch)  # the objectives study trains its own
    if start is not None:  # nothing is trained: the training settings would only trigger needless re-runs
        params = {**{k: v for k, v in params.items() if k != "train"}, "start": start}
    return _canonical(params)


def sensitivity_params(config: dict) -> dict:
    return _canonical({"threat_model": config["threat_model"], "sensitivity": config["sensitivity"], "include_first_last": config["prune"]["include_first_last"], "device": config["device"]})


def method_spec(config: dict, key: str) -> dict:
    """The options the method is built with (its fine-tuning and sparsities belong to the pipeline)."""
    spec = {k: v for k, v in config["prune"]["methods"][key].items() if k not in PIPELINE_OPTIONS}
    spec.setdefault("method", key)
    return spec


def prune_params(config: dict, key: str, pretrain_objective: str | None = None, *, dataset: str) -> dict:
    return _canonical({
        "method": method_spec(config, key),
        "include_first_last": config["prune"]["include_first_last"],
        "threat_model": config["threat_model"],
        "objective": _training(config, "pretrain", dataset, {"objective": pretrain_objective} if pretrain_objective else None),
        "device": config["device"],
        "fast_path": config["fast_path"],
    })


FINETUNE_MODES = ("none", "natural", "adversarial")


def objective_names() -> list[str]:
    """Every training objective the config accepts (the schema's enum), e.g. for the studies' path wildcards."""
    return list(_schema()["$defs"]["objective"]["enum"])


def finetune_params(config: dict, key: str | None = None, mode: str | None = None, objective: str | None = None, *, dataset: str) -> dict:
    """Fine-tuning of method `key`: the finetune section, then the method's own `finetune` override; a study's
    `mode` (none | natural | adversarial = the finetune section's objective) or `objective` replaces both."""
    override = config["prune"]["methods"][key].get("finetune") if key else None
    if mode is not None:
        override = {"none": "none", "natural": {"objective": "natural"}, "adversarial": {}}[mode]
    if objective is not None:
        override = {"objective": objective}
    if override == "none":
        override = {"epochs": 0}
    return _canonical({"threat_model": config["threat_model"], "train": _training(config, "finetune", dataset, override), "device": config["device"],
                       "fast_path": config["fast_path"]})


def evaluate_params(config: dict) -> dict:
    # How often AutoAttack saves its state changes no result: kept out, so changing it re-runs nothing (the rule's
    # `resume` param carries it).
    evaluate = {**config["evaluate"], "autoattack": {k: v for k, v in config["evaluate"]["autoattack"].items() if k != "state_every"}}
    return _canonical({"threat_model": config["threat_model"], "evaluate": evaluate, "include_first_last": config["prune"]["include_first_last"],
                       "device": config["device"]})


# --- checkpoints made elsewhere, and exports to the field's formats (advprune/interop) ---------------------------

def _check_external(config: dict, schema: dict) -> None:
    """External entries: names that are not method keys, datasets of the run, sparsities that name a directory;
    fills each entry's defaults and its architecture options (the run's models.<arch> unless it gives its own)."""
    for name, entry in config["external"].items():
        key = f"external.{name}"
        if name in config["prune"]["methods"]:
            raise ConfigError(f"config key '{key}': {name!r} is also a key of prune.methods: give the external checkpoint its own name")
        if entry["dataset"] not in config["datasets"]:
            raise ConfigError(f"config key '{key}.dataset': {entry['dataset']!r} is not a dataset of the run ({', '.join(config['datasets'])})")
        if len(fmt_sparsity(entry["sparsity"]).partition(".")[2]) > SPARSITY_MAX_DECIMALS:
            raise ConfigError(f"config key '{key}.sparsity': {entry['sparsity']!r} has more than {SPARSITY_MAX_DECIMALS} decimals")
        _fill_defaults(entry, schema["$defs"]["external"], schema)
        entry.setdefault("model", config["models"].get(entry["arch"], {}))


def check_external_checkpoints(config: dict) -> None:
    """Every external checkpoint of the run is a file; raises ConfigError naming the first that is not."""
    for name, entry in config["external"].items():
        path = Path(entry["path"])
        if path.is_dir():
            raise ConfigError(f"config key 'external.{name}.path': {path} is a directory: name the checkpoint file in it")
        if not path.is_file():
            raise ConfigError(f"config key 'external.{name}.path': {path} not found: put the {entry['layout']} checkpoint to evaluate there")


def external_params(config: dict, name: str) -> dict:
    """What the import of external checkpoint `name` depends on (its file is the job's input)."""
    entry = config["external"][name]
    return _canonical({"arch": entry["arch"], "model": entry["model"], "layout": entry["layout"], "sparsity": entry["sparsity"],
                       "sparsity_tolerance": entry["sparsity_tolerance"], "harp_alpha": entry["harp_alpha"], "source": entry.get("source"),
                       "include_first_last": config["prune"]["include_first_last"]})


def export_items(config: dict) -> list[dict]:
    """Every pruned model of the run's main grid: its ids, evaluation record and fine-tuned checkpoint."""
    items = []
    for dataset in config["datasets"]:
        for arch in config["archs"]:
            for seed in config["seeds"]:
                for method in config["prune"]["methods"]:
                    for sparsity in map(fmt_sparsity, method_sparsities(config, method)):
                        tail = f"{dataset}/{arch}/seed{seed}/{method}/s{sparsity}"
                        items.append({"dataset": dataset, "arch": arch, "seed": seed, "method": method, "sparsity": sparsity,
                                      "record": f"results/eval/{tail}.json", "model": f"results/finetune/{tail}/model.pt"})
    return items


def export_params(config: dict) -> dict:
    """What the export depends on besides the records and checkpoints: how each (dataset, arch) was pretrained
    (the taxonomy entry's pretraining) and the AP keys the config gives."""
    pretrain = {f"{d}/{a}": {"objective": config["pretrain"]["objective"], "start": start_checkpoint(config, d, a)}
                for d in config["datasets"] for a in config["archs"]}
    return _canonical({"pretrain": pretrain, "ap_keys": config["export"]["ap_keys"]})
