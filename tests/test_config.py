"""A bad config stops Snakemake before any job, with one line naming the key, and touches nothing."""

import shutil
import subprocess

import pytest
import yaml

from advprune.config import ConfigError, fmt_sparsity, load_config, method_option_schemas, method_sparsities, type_overrides, validate
from advprune.data import DATASETS
from advprune.models import list_models
from advprune.pruning import list_methods

from conftest import REPO, SNAKEMAKE, env_with_repo
from test_workflow import planned

DEFAULT = yaml.safe_load((REPO / "config/config.yaml").read_text())

BAD = [
    ("unknown key", lambda c: c.update(epochz=3), "'epochz': unknown key"),
    ("nested unknown key", lambda c: c["evaluate"]["pgd"].update(stepz=3), "'evaluate.pgd.stepz': unknown key"),
    ("wrong type", lambda c: c["pretrain"].update(epochs="ten"), "'pretrain.epochs': 'ten' is not of type 'integer'"),
    ("sparsity of 1", lambda c: c["prune"].update(sparsities=[0.5, 1.0]), "'prune.sparsities[1]'"),
    ("sparsity of 0", lambda c: c["prune"].update(sparsities=[0.0]), "'prune.sparsities[0]'"),
    ("a method's sparsity of 1", lambda c: c["prune"]["methods"]["lwm"].update(sparsities=[0.5, 1.0]), "'prune.methods.lwm.sparsities[1]'"),
    ("eps of 0", lambda c: c["threat_model"].update(eps=0), "'threat_model.eps'"),
    ("negative eps", lambda c: c["threat_model"].update(eps=-0.1), "'threat_model.eps'"),
    ("unknown dataset", lambda c: c.update(datasets=["imagenet21k"]), "'datasets[0]': 'imagenet21k' is not one of"),
    ("unknown arch", lambda c: c.update(archs=["small_cnn", "vit_h"]), "'archs[1]': 'vit_h' is not one of"),
    ("unknown method", lambda c: c["prune"]["methods"].update(snip={}), "'prune.methods.snip': unknown pruning method 'snip'"),
    ("bad method option", lambda c: c["prune"]["methods"]["lwm"].update(scope="diagonal"), "'prune.methods.lwm.scope'"),
    ("missing section", lambda c: c.pop("evaluate"), "'evaluate' is a required property"),
    ("unknown objective", lambda c: c["finetune"].update(objective="adv"), "'finetune.objective': 'adv' is not one of: natural, pgd_at, trades, mart"),
    ("unknown enum in a method", lambda c: c["prune"]["methods"]["lwm"].update(scope="x"), "'prune.methods.lwm.scope': 'x' is not one of: layer, global"),
    ("method override neither none nor a mapping", lambda c: c["prune"]["methods"]["lwm"].update(finetune="adv"),
     "'prune.methods.lwm.finetune': 'adv' is not one of: none, a mapping"),
    ("method key not lowercase", lambda c: c["prune"]["methods"].update(LWM={}), "'prune.methods.LWM': 'LWM' does not match"),
    ("method key dense", lambda c: c["prune"]["methods"].update(dense={}), "'prune.methods.dense': the name 'dense' is reserved"),
    # issue 18: `$` also matches before a final newline; such a key would make paths and job names with a newline
    ("method key ending in a newline", lambda c: c["prune"]["methods"].update({"lwm2\n": {"method": "lwm"}}),
     "'prune.methods.lwm2\\n': 'lwm2\\n' does not match"),
    ("device ending in a newline", lambda c: c.update(device="cpu\n"), "'device': 'cpu\\n' does not match"),
    ("sparsity too long for a path", lambda c: c["prune"].update(sparsities=[0.123456789012]), "'prune.sparsities[0]': 0.123456789012 has more than 10 decimals"),
    # A hostile user's probes (issue 11), kept here so that they stay refused.
    ("method option of the wrong type", lambda c: c["prune"]["methods"]["lwm"].update(iterations="three"),
     "'prune.methods.lwm.iterations': 'three' is not of type 'integer'"),
    ("unknown key in a method entry", lambda c: c["prune"]["methods"]["lwm"].update(scopez="layer"), "'prune.methods.lwm.scopez': unknown key"),
    ("study names a method not in prune.methods", lambda c: c["studies"]["finetune"].update(methods=["lwm", "snip"]),
     "'studies.finetune.methods[1]': 'snip' is not a key of prune.methods"),
    ("objectives study names a method not in prune.methods", lambda c: c["studies"]["objectives"].update(method="snip"),
     "'studies.objectives.method': 'snip' is not a key of prune.methods"),
    ("duplicate seeds", lambda c: c.update(seeds=[0, 0]), "'seeds': [0, 0] has non-unique elements"),
    ("seed beyond numpy's range", lambda c: c.update(seeds=[2**32]), "'seeds[0]': 4294967296 is greater than the maximum of 4294967295"),
    ("eps not a number", lambda c: c["threat_model"].update(eps=float("nan")), "'threat_model.eps': nan is not a finite number"),
    ("infinite learning rate", lambda c: c["pretrain"].update(lr=float("inf")), "'pretrain.lr': inf is not a finite number"),
    ("study sparsity not a number", lambda c: c["studies"]["finetune"].update(sparsity=float("nan")), "'studies.finetune.sparsity': nan is not a finite number"),
    ("n_examples of 0", lambda c: c["evaluate"].update(n_examples=0), "'evaluate.n_examples': 0 is less than the minimum of 1"),
    ("negative model width", lambda c: c["models"]["small_cnn"].update(width=-1), "'models.small_cnn.width': -1 is less than the minimum of 1"),
    ("unknown model option", lambda c: c["models"]["small_cnn"].update(depth=3), "'models.small_cnn.depth': unknown key"),
    ("empty prune.methods", lambda c: c["prune"].update(methods={}), "'prune.methods': {} should be non-empty"),
    ("method entry not a mapping", lambda c: c["prune"]["methods"].update(lwm=None), "'prune.methods.lwm': None is not of type 'object'"),
    ("report format matplotlib cannot write here", lambda c: c["report"].update(formats=["png", "bmp"]), "'report.formats[1]': 'bmp' is not one of: png, pdf, svg"),
    ("a section left empty", lambda c: c.update(evaluate=None), "'evaluate': None is not of type 'object'"),
    ("a count written as a float", lambda c: c["evaluate"].update(n_examples=50.0), "'evaluate.n_examples': 50.0 is not one of: an integer, null"),
    ("a seed written as a float", lambda c: c.update(seeds=[1.0]), "'seeds[0]': 1.0 is not of type 'integer'"),
    ("unknown placeholder in the start checkpoint", lambda c: c["pretrain"].update(checkpoint="models/{datasett}/{arch}.pt"),
     "'pretrain.checkpoint': 'models/{datasett}/{arch}.pt' is not a path template with only {dataset} and {arch} in braces (KeyError: 'datasett'"),
    ("unclosed brace in the start checkpoint", lambda c: c["pretrain"].update(checkpoint="models/{dataset.pt"),
     "'pretrain.checkpoint': 'models/{dataset.pt' is not"),
]


def _bad(mutate):
    config = yaml.safe_load(yaml.safe_dump(DEFAULT))
    mutate(config)
    return config


@pytest.mark.parametrize("name,mutate,message", BAD, ids=[b[0] for b in BAD])
def test_validation_names_the_bad_key(name, mutate, message):
    with pytest.raises(ConfigError, match=None) as error:
        validate(_bad(mutate))
    assert message in str(error.value) and "\n" not in str(error.value)


IN_SNAKEMAKE = [b for b in BAD if b[0] in ("unknown key", "sparsity of 1", "unknown method", "eps not a number")]


@pytest.mark.parametrize("name,mutate,message", IN_SNAKEMAKE, ids=[b[0] for b in IN_SNAKEMAKE])
def test_snakemake_stops_before_any_job_and_keeps_results(tmp_path, name, mutate, message):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(_bad(mutate)))
    kept = tmp_path / "results/pretrain/digits/small_cnn/seed0/model.pt"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"weights that took a day to train")
    run = subprocess.run([SNAKEMAKE, "-n", "--cores", "1", "--snakefile", str(REPO / "Snakefile"), "--configfile", "bad.yaml"],
                         cwd=tmp_path, capture_output=True, text=True, env=env_with_repo())
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("advprune: config key ") and message in lines[0]
    assert kept.read_bytes() == b"weights that took a day to train"
    assert not (tmp_path / ".snakemake/log").exists() or not any("Job stats" in p.read_text() for p in (tmp_path / ".snakemake/log").iterdir())


def test_a_key_given_twice_in_a_config_file_is_refused(tmp_path):
    # Plain YAML keeps the later section silently: the pasted `prune:` would replace the grid.
    (tmp_path / "twice.yaml").write_text((REPO / ".test/config.yaml").read_text() + "prune: {sparsities: [0.5], methods: {lwm: {}}}\n")
    with pytest.raises(ConfigError, match=r"^config file .*twice.yaml: not valid YAML \(line \d+\): key 'prune' given twice in one mapping$"):
        load_config(tmp_path / "twice.yaml")
    run = subprocess.run([SNAKEMAKE, "-n", "--cores", "1", "--snakefile", str(REPO / "Snakefile"), "--configfile", "twice.yaml"],
                         cwd=tmp_path, capture_output=True, text=True, env=env_with_repo())
    assert run.returncode != 0 and run.stderr.strip().startswith("advprune: config file") and "key 'prune' given twice" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_paths_that_cannot_be_used_are_named(tmp_path):
    from advprune.config import check_start_checkpoints

    (tmp_path / "a_file").write_text("")
    with pytest.raises(ConfigError, match=f"^config key 'data.raw_root': {tmp_path}/a_file/raw cannot be a directory, {tmp_path}/a_file is a file$"):
        validate(_bad(lambda c: c["data"].update(raw_root=str(tmp_path / "a_file/raw"))))
    config = validate(_bad(lambda c: c["pretrain"].update(checkpoint=str(tmp_path))))
    with pytest.raises(ConfigError, match=f"^config key 'pretrain.checkpoint': {tmp_path} is a directory: name the checkpoint file in it$"):
        check_start_checkpoints(config)


def test_n_examples_larger_than_a_prepared_split_is_refused(tmp_path):
    import json

    from advprune.config import check_split_sizes

    config = validate(_bad(lambda c: c["data"].update(root=str(tmp_path))))
    check_split_sizes(config)  # not prepared yet: sizes unknown before the data job
    (tmp_path / "digits").mkdir()
    meta = {"splits": {"train": 1222, "val": 216, "test": 359}, "val_fraction": config["data"]["val_fraction"], "split_seed": config["data"]["split_seed"]}
    (tmp_path / "digits/meta.json").write_text(json.dumps(meta))
    check_split_sizes(config)
    config["evaluate"]["n_examples"] = 360
    with pytest.raises(ConfigError, match=r"^config key 'evaluate.n_examples': 360 is more than the 359 examples in the test split of digits \("):
        check_split_sizes(config)
    config["evaluate"]["split"] = "val"
    with pytest.raises(ConfigError, match="^config key 'evaluate.n_examples': 360 is more than the 216 examples in the val split"):
        check_split_sizes(config)
    (tmp_path / "digits/meta.json").write_text(json.dumps({**meta, "val_fraction": 0.3}))  # re-prepared with other splits: sizes unknown
    check_split_sizes(config)


@pytest.mark.parametrize("value", [0.5, 0.99, 1e-05, 0.12345678, 0.9000001, 0.1 + 0.2, 2.5e-7])
def test_a_sparsity_path_reads_back_as_the_same_number(value):
    text = fmt_sparsity(value)
    assert float(text) == value and set(text) <= set("0123456789.")
    assert fmt_sparsity(0.9) != fmt_sparsity(0.9000001)


def test_config_overrides_get_the_types_of_a_config_file():
    # What Snakemake hands over for --config 'seeds=[1]' 'threat_model={norm: Linf, eps: 0.2}' ... (YAML BaseLoader: all strings)
    overrides = {"seeds": ["1"], "threat_model": {"norm": "Linf", "eps": "0.2"}, "evaluate": {"n_examples": "null"}, "data": {"root": "2024"},
                 "fast_path": {"channels_last": "false"}}
    config = _bad(lambda c: None)
    for key, value in overrides.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    validate(type_overrides(config, overrides))
    assert config["seeds"] == [1] and config["threat_model"]["eps"] == 0.2 and config["evaluate"]["n_examples"] is None
    assert config["data"]["root"] == "2024"  # the schema wants a string there
    assert config["fast_path"]["channels_last"] is False


def test_snakemake_accepts_typed_overrides_unusual_sparsities_and_data_paths(tmp_path):
    (tmp_path / "config").mkdir()
    shutil.copy(REPO / ".test/config.yaml", tmp_path / "config/config.yaml")
    # data paths as people write them (issue 18: a trailing slash made the rules' patterns and the jobs' paths differ)
    run = subprocess.run([SNAKEMAKE, "-n", "--cores", "1", "--snakefile", str(REPO / "Snakefile"), "--config", "seeds=[1]",
                          "threat_model={norm: Linf, eps: 0.2}", "prune={sparsities: [0.00001, 0.9, 0.9000001], methods: {random: {sparsities: [0.99]}}}",
                          "data={root: resources/data/, raw_root: ./resources//raw}"],
                         cwd=tmp_path, capture_output=True, text=True, env=env_with_repo())
    assert run.returncode == 0, run.stderr[-2000:]
    assert planned(run)["prune"] == 2 * 3 + 1  # .test/config.yaml: lwm, lwm_global at the three; random at its own one
    for name in ("s0.00001", "s0.9.json", "s0.9000001"):
        assert f"seed1/lwm/{name}" in run.stdout
    assert "seed1/random/s0.99.json" in run.stdout and "seed1/random/s0.9.json" not in run.stdout


def test_shipped_configs_are_valid():
    for path in [REPO / "config/config.yaml", REPO / "config/full.yaml", REPO / ".test/config.yaml", *sorted((REPO / "config/paper").glob("*.yaml"))]:
        load_config(path)


def test_the_full_grid_holds_every_arm_of_the_default():
    """config/full.yaml brings back what the default leaves out: the default's methods with the same settings,
    at every sparsity, its study arms and more, and the same settings elsewhere."""
    full = load_config(REPO / "config/full.yaml")
    default = load_config(REPO / "config/config.yaml")
    for key, options in default["prune"]["methods"].items():
        assert {k: v for k, v in full["prune"]["methods"][key].items() if k != "sparsities"} == {k: v for k, v in options.items() if k != "sparsities"}, key
        assert set(method_sparsities(default, key)) <= set(method_sparsities(full, key)), key
    assert set(default["studies"]["finetune"]["methods"]) <= set(full["studies"]["finetune"]["methods"])
    assert {tuple(p) for p in default["studies"]["objectives"]["pairs"]} <= {tuple(p) for p in full["studies"]["objectives"]["pairs"]}
    for section in ("seeds", "models", "threat_model", "pretrain", "sensitivity", "finetune", "evaluate"):
        assert full[section] == default[section], section


def test_schema_enums_match_the_registries():
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    assert set(schema["properties"]["datasets"]["items"]["enum"]) == set(DATASETS)
    assert set(schema["properties"]["archs"]["items"]["enum"]) == set(list_models())
    assert set(schema["properties"]["models"]["properties"]) == set(list_models())
    assert set(method_option_schemas()) == set(list_methods())


def test_defaults_are_filled_in():
    config = _bad(lambda c: c["evaluate"]["pgd"].pop("restarts"))
    assert validate(config)["evaluate"]["pgd"]["restarts"] == 1


def test_a_configfile_replaces_the_default_instead_of_merging_into_it(tmp_path):
    # Merged, the default's methods and studies would join the test config's (and its jobs would double).
    (tmp_path / "config").mkdir()
    shutil.copy(REPO / "config/config.yaml", tmp_path / "config/config.yaml")
    run = subprocess.run([SNAKEMAKE, "-n", "--cores", "1", "--snakefile", str(REPO / "Snakefile"), "--configfile", str(REPO / ".test/config.yaml")],
                         cwd=tmp_path, capture_output=True, text=True, env=env_with_repo())
    assert run.returncode == 0, run.stderr[-2000:]
    assert planned(run)["prune"] == 3 * 2  # .test/config.yaml: lwm, lwm_global, random x 2 sparsities
    assert not [rule for rule in planned(run) if rule.startswith("study_")]


@pytest.mark.parametrize("objectives_study", [False, True])
def test_sensitivity_methods_are_refused_only_by_the_objectives_study(tmp_path, objectives_study):
    config = load_config(REPO / ".test/config.yaml")
    config["prune"]["methods"] = {"mrpf": {}}
    config["studies"] = {"objectives": {"method": "mrpf", "pairs": [["natural", "natural"]]}} if objectives_study else {}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    run = subprocess.run([SNAKEMAKE, "-n", "--cores", "1", "--snakefile", str(REPO / "Snakefile"), "--configfile", "c.yaml"],
                         cwd=tmp_path, capture_output=True, text=True, env=env_with_repo())
    if objectives_study:
        assert run.returncode != 0 and run.stderr.strip().startswith("advprune: config key 'studies.objectives.method'")
    else:
        assert run.returncode == 0 and planned(run)["prune"] == 2, run.stderr[-2000:]
