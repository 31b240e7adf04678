# Config loading and validation, wildcard constraints and every input/param function of the workflow.
import functools
import os
import sys

from advprune import config as cfg
from advprune.codehash import code_hash

try:
    for configfile_path in workflow.overwrite_configfiles:  # what Snakemake's YAML reading lets pass (a key given twice)
        cfg.read_config_file(configfile_path)
    cfg.type_overrides(config, workflow.config_settings.overwrite_config)
    cfg.validate(config)
    cfg.check_start_checkpoints(config)
    cfg.check_external_checkpoints(config)
    cfg.check_split_sizes(config)
except cfg.ConfigError as error:
    # One line naming the key, before any job runs (nothing already computed is touched).
    sys.exit(f"advprune: {error}")

SCRIPTS = f"{workflow.basedir}/scripts"
DATASETS = config["datasets"]
ARCHS = config["archs"]
SEEDS = [str(s) for s in config["seeds"]]
METHODS = list(config["prune"]["methods"])
SPARSITIES = {m: [cfg.fmt_sparsity(s) for s in cfg.method_sparsities(config, m)] for m in METHODS}  # the main grid, per method
# Methods whose prune job reads the sensitivity table.
SENSITIVITY_METHODS = {"mrpf"}
STUDIES = config["studies"]
# Checkpoints made elsewhere: rows of the grid named by their key, evaluated once (on the first seed's path).
EXTERNAL = config["external"]
OBJECTIVE = config["pretrain"]["objective"]
if "objectives" in STUDIES and cfg.method_spec(config, STUDIES["objectives"]["method"])["method"] in SENSITIVITY_METHODS:
    sys.exit("advprune: config key 'studies.objectives.method': methods that read the sensitivity table cannot be pretrained with other objectives yet")


wildcard_constraints:
    dataset="|".join(DATASETS),
    arch="|".join(dict.fromkeys([*ARCHS, *(e["arch"] for e in EXTERNAL.values())])),
    seed=r"\d+",
    method="|".join(["dense", *METHODS, *EXTERNAL]),
    sparsity=cfg.SPARSITY_PATTERN,
    mode="|".join(cfg.FINETUNE_MODES),
    pre="|".join(cfg.objective_names()),
    ft="|".join(cfg.objective_names()),


def code(script):
    """Hash of a script and the advprune modules it imports: a rerun trigger for library changes."""
    return code_hash(f"{SCRIPTS}/{script}")


def prune_code(wildcards):
    # Each method lives in advprune/pruning/<name>.py: editing one method re-runs only its own jobs.
    return _method_code(cfg.method_spec(config, wildcards.method)["method"])


@functools.cache  # once per method and Snakemake run (thousands of prune jobs share a handful of hashes)
def _method_code(method):
    return code_hash(f"{SCRIPTS}/prune.py", extra_modules=(f"advprune.pruning.{method}",))


DATA_ROOT = config["data"]["root"]


def data_dir(wildcards):
    return _data_dir(wildcards.dataset)


@functools.cache  # every job's inputs name its dataset's files
def _data_dir(dataset):
    return cfg.fetch_params(config, dataset)["out_dir"]


def raw_dir(wildcards):
    return cfg.fetch_params(config, wildcards.dataset)["raw_dir"]


def data_files(wildcards):
    root = data_dir(wildcards)
    return [f"{root}/meta.json"] + [f"{root}/{split}_{xy}.npy" for split in ("train", "val", "test") for xy in "xy"]


def pretrain_settings(wildcards):
    return cfg.pretrain_params(config, wildcards.arch, dataset=wildcards.dataset)


def start_checkpoint(wildcards):
    """The checkpoint the dense model starts from (pretrain.checkpoint / pretrain.robustbench), if any: an input,
    so that a replaced file re-runs the conversion and everything after it."""
    start = cfg.start_checkpoint(config, wildcards.dataset, wildcards.arch)
    return [start["path"]] if start else []


def prune_settings(wildcards):
    return cfg.prune_params(config, wildcards.method, wildcards.get("pre"), dataset=wildcards.dataset)


def finetune_settings(wildcards):
    return cfg.finetune_params(config, wildcards.method, wildcards.get("mode"), wildcards.get("ft"), dataset=wildcards.dataset)


def eval_labels(wildcards):
    """Fields an evaluation record carries besides its path: the method implementation and, in studies, the variant."""
    method = wildcards.get("method", "dense")
    if method in EXTERNAL:  # its implementation where the config names one; where it came from is in its checkpoint
        return {"impl": EXTERNAL[method]["method"]} if "method" in EXTERNAL[method] else {}
    labels = {} if method == "dense" else {"impl": cfg.method_spec(config, method)["method"]}
    for key, name in (("mode", "finetune_mode"), ("pre", "pretrain_objective"), ("ft", "finetune_objective")):
        if key in wildcards.keys():
            labels[name] = wildcards[key]
    return labels


def resume_path(wildcards, output):
    # Outside results/: Snakemake deletes a failed job's outputs, the resume state must survive.
    return f"resume/{output[0]}.state.pt"


def autoattack_state(wildcards, output):
    """An evaluation's AutoAttack state: outside results/ like training's, and how often it is saved. A function of
    `output`, so Snakemake does not count it among the params whose change re-runs a job: the interval changes no
    result (advprune.config.evaluate_params leaves it out of the settings for the same reason)."""
    return {"path": resume_path(wildcards, output), "every": config["evaluate"]["autoattack"]["state_every"]}


def resume_prefix(wildcards, output):
    # Methods that train keep one resume state per phase: {prefix}.{phase}.state.pt
    return f"resume/{output[0]}"


def pretrained_model(wildcards):
    """The main pretrained model, or the objectives study's one pretrained with another objective."""
    if wildcards.get("pre", OBJECTIVE) == OBJECTIVE:
        return "results/pretrain/{dataset}/{arch}/seed{seed}/model.pt".format(**wildcards)
    return "results/studies/objectives/{dataset}/{arch}/seed{seed}/{pre}/pretrain/model.pt".format(**wildcards)


def pruned_model(wildcards):
    if wildcards.get("pre", OBJECTIVE) == OBJECTIVE:
        return "results/prune/{dataset}/{arch}/seed{seed}/{method}/s{sparsity}/model.pt".format(**wildcards)
    return "results/studies/objectives/{dataset}/{arch}/seed{seed}/{pre}/{method}/s{sparsity}/prune/model.pt".format(**wildcards)


def finetuned_model(wildcards):
    """A study's fine-tuned model; the main pipeline's one wherever the settings are the same (no recompute)."""
    if wildcards.get("pre", OBJECTIVE) == OBJECTIVE and \
            finetune_settings(wildcards) == cfg.finetune_params(config, wildcards.method, dataset=wildcards.dataset):
        return "results/finetune/{dataset}/{arch}/seed{seed}/{method}/s{sparsity}/model.pt".format(**wildcards)
    if "mode" in wildcards.keys():
        return "results/studies/finetune/{dataset}/{arch}/seed{seed}/{method}/s{sparsity}/{mode}/model.pt".format(**wildcards)
    return "results/studies/objectives/{dataset}/{arch}/seed{seed}/{pre}/{method}/s{sparsity}/{ft}/model.pt".format(**wildcards)


def prune_inputs(wildcards):
    inputs = {"model": pretrained_model(wildcards), "data": data_files(wildcards)}
    if cfg.method_spec(config, wildcards.method)["method"] in SENSITIVITY_METHODS:
        inputs["sensitivity"] = "results/sensitivity/{dataset}/{arch}/seed{seed}/sensitivity.csv".format(**wildcards)
    return inputs


def evaluated_model(wildcards):
    if wildcards.method in EXTERNAL:
        return "results/external/{dataset}/{arch}/{method}/s{sparsity}/model.pt".format(**wildcards)
    if wildcards.method == "dense":
        return "results/pretrain/{dataset}/{arch}/seed{seed}/model.pt".format(**wildcards)
    return "results/finetune/{dataset}/{arch}/seed{seed}/{method}/s{sparsity}/model.pt".format(**wildcards)


def _runs(pattern, pruned):
    out = []
    for dataset in DATASETS:
        for arch in ARCHS:
            for seed in SEEDS:
                ids = dict(dataset=dataset, arch=arch, seed=seed)
                if not pruned:
                    out.append(pattern.format(**ids))
                    continue
                out += [pattern.format(**ids, method=m, sparsity=s) for m in METHODS for s in SPARSITIES[m]]
    return out


def all_evaluations():
    return _runs("results/eval/{dataset}/{arch}/seed{seed}/dense/s0.json", False) + _runs(
        "results/eval/{dataset}/{arch}/seed{seed}/{method}/s{sparsity}.json", True
    ) + external_evaluations()


def external_evaluations():
    return [f"results/eval/{e['dataset']}/{e['arch']}/seed{SEEDS[0]}/{name}/s{cfg.fmt_sparsity(e['sparsity'])}.json" for name, e in EXTERNAL.items()]


def external_checkpoint(wildcards):
    return EXTERNAL[wildcards.method]["path"]


def external_settings(wildcards):
    return cfg.external_params(config, wildcards.method)


def export_inputs(wildcards):
    items = cfg.export_items(config)
    return {"records": [item["record"] for item in items], "models": [item["model"] for item in items]}


def export_outputs():
    """The submission files of every pruned model, a target of the default run when export.enabled is set."""
    return ["results/export"] if config["export"]["enabled"] else []


def all_sensitivity():
    return _runs("results/sensitivity/{dataset}/{arch}/seed{seed}/sensitivity.csv", False)


def all_pretrain_curves():
    return _runs("results/pretrain/{dataset}/{arch}/seed{seed}/curve.csv", False)


def all_finetune_curves():
    return _runs("results/finetune/{dataset}/{arch}/seed{seed}/{method}/s{sparsity}/curve.csv", True)


def all_prune_infos():
    return _runs("results/prune/{dataset}/{arch}/seed{seed}/{method}/s{sparsity}/info.json", True)


def _study_record(path, wildcards):
    """A study's evaluation record: the main pipeline's where the model is the main one (same record, no second
    AutoAttack run), else the study's own; with the labels that place it in the study table."""
    model, ids = finetuned_model(wildcards) if "method" in wildcards.keys() else pretrained_model(wildcards), dict(wildcards.items())
    if model.startswith("results/finetune/"):
        path = "results/eval/{dataset}/{arch}/seed{seed}/{method}/s{sparsity}.json".format(**ids)
    elif model.startswith("results/pretrain/"):
        path = "results/eval/{dataset}/{arch}/seed{seed}/dense/s0.json".format(**ids)
    return {"path": path, "labels": eval_labels(wildcards)}


def _study_variants():
    """Table name -> (record path pattern, wildcards) of every evaluation in that study."""
    from snakemake.iocontainers import Wildcards

    def variants(pattern, variants):
        out = []
        for run in _runs("{dataset}/{arch}/{seed}", False):
            dataset, arch, seed = run.split("/")
            out += [(pattern, Wildcards(fromdict=dict(dataset=dataset, arch=arch, seed=seed, **variant))) for variant in variants]
        return out

    tables = {"study_finetune": [], "study_objectives": []}
    if "finetune" in STUDIES:
        study = STUDIES["finetune"]
        modes = [dict(method=m, sparsity=cfg.fmt_sparsity(study["sparsity"]), mode=mode) for m in study["methods"] for mode in study["modes"]]
        tables["study_finetune"] = variants("results/studies/finetune/{dataset}/{arch}/seed{seed}/{method}/s{sparsity}/{mode}/eval.json", modes)
    if "objectives" in STUDIES:
        study = STUDIES["objectives"]
        dense = [dict(pre=pre) for pre in dict.fromkeys(pre for pre, _ in study["pairs"])]
        pruned = [dict(pre=pre, ft=ft, method=study["method"], sparsity=cfg.fmt_sparsity(study["sparsity"])) for pre, ft in study["pairs"]]
        tables["study_objectives"] = variants("results/studies/objectives/{dataset}/{arch}/seed{seed}/{pre}/dense.json", dense) + variants(
            "results/studies/objectives/{dataset}/{arch}/seed{seed}/{pre}/{method}/s{sparsity}/{ft}/eval.json", pruned
        )
    return tables


def study_records():
    """Table name -> the evaluation records of that study (see _study_record)."""
    return {table: [_study_record(pattern.format(**wildcards), wildcards) for pattern, wildcards in variants]
            for table, variants in _study_variants().items()}


def _computed_from(wildcards):
    """The prepared data and every checkpoint, with its curve or prune info, that the evaluation record of these
    wildcards is computed from (the study's own or the main pipeline's, as its evaluation job reads them)."""
    pretrained = pretrained_model(wildcards)
    files = [*data_files(wildcards), pretrained, f"{os.path.dirname(pretrained)}/curve.csv"]
    if wildcards.get("method", "dense") != "dense":  # (the sensitivity tables are aggregate's inputs)
        pruned, finetuned = pruned_model(wildcards), finetuned_model(wildcards)
        files += [pruned, f"{os.path.dirname(pruned)}/info.json", finetuned, f"{os.path.dirname(finetuned)}/curve.csv"]
    return files


def computed_outputs():
    """Every checkpoint, curve, prune info and prepared dataset that an evaluation record is computed from.

    Part of the default target with the tables and their inputs: Snakemake re-runs a job whose output is missing
    only when the target, or a job that must run, requires that output. Without this, a deleted or failed
    intermediate behind tables that still exist (a checkpoint deleted as damaged, a record whose re-run was
    killed) would leave `snakemake` with "Nothing to be done"."""
    from snakemake.iocontainers import Wildcards

    main = [Wildcards(fromdict=dict(zip(("dataset", "arch", "seed", "method", "sparsity"), run.split("|"))))
            for run in _runs("{dataset}|{arch}|{seed}|dense|0", False) + _runs("{dataset}|{arch}|{seed}|{method}|{sparsity}", True)]
    studies = [wildcards for variants in _study_variants().values() for _, wildcards in variants]
    external = [f"results/external/{e['dataset']}/{e['arch']}/{name}/s{cfg.fmt_sparsity(e['sparsity'])}/model.pt" for name, e in EXTERNAL.items()]
    return list(dict.fromkeys([*(path for wildcards in main + studies for path in _computed_from(wildcards)), *external]))


REPORT_DIR = "results/report"


def parent_dir_of_input(wildcards, input):
    return os.path.dirname(input[0])


def common_dir_of_output(wildcards, output):
    return os.path.commonpath(list(output))


def report_outputs():
    from advprune.report import expected_outputs

    return expected_outputs(REPORT_DIR, config["report"]["formats"])


# Figure -> (category, subcategory) in `snakemake --report`; each has its caption in workflow/report/<figure>.rst.
REPORT_FIGURES = {
    "robustness_vs_sparsity": ("Results", "Robustness vs sparsity"),
    "security_curves": ("Results", "Security curves (HO-FMN)"),
    "layer_sparsity": ("Results", "Per-layer sparsity"),
    "training_curves": ("Results", "Training curves"),
    "sensitivity": ("Results", "Module robustness sensitivity"),
    "finetune_study": ("Studies", "Fine-tuning (criterion x mode)"),
    "objective_study": ("Studies", "Objectives (pretraining x fine-tuning)"),
    "harp_layer_rates": ("Methods", "HARP"),
    "mrpf_sensitivity_vs_sparsity": ("Methods", "MRPF"),
    "pwoa_loss_terms": ("Methods", "PwoA"),
}
REPORT_TABLES = {"robustness": "Results", "latency": "Results", "finetune_study": "Studies", "objective_study": "Studies", "findings": "Findings"}


def annotated_report_outputs():
    """report_outputs(), with the figures (in the first format a browser shows) and the CSV tables marked for
    `snakemake --report`: caption, category, and labels naming the architectures and datasets they cover."""
    shown = next((f for f in ("png", "svg", "pdf") if f in config["report"]["formats"]))
    scope = {"architectures": ", ".join(ARCHS), "datasets": ", ".join(DATASETS)}
    outputs = []
    for path in report_outputs():
        name, ext = os.path.splitext(os.path.basename(path))
        kind = os.path.basename(os.path.dirname(path))
        if kind == "figures" and ext == f".{shown}":
            category, subcategory = REPORT_FIGURES[name]
            path = report(path, caption=f"../report/{name}.rst", category=category, subcategory=subcategory, labels={"figure": name, **scope})
        elif kind == "tables" and ext == ".csv":
            path = report(path, caption=f"../report/table_{name}.rst", category=REPORT_TABLES[name], subcategory="Tables", labels={"table": name, **scope})
        outputs.append(path)
    return outputs
