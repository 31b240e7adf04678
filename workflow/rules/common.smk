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
    cfg.check_split_sizes(config)
except cfg.ConfigError as error:
    # One line naming the key, before any job runs (nothing already computed is touched).
    sys.exit(f"advprune: {error}")

SCRIPTS = f"{workflow.basedir}/scripts"
DATASETS = config["datasets"]
ARCHS = config["archs"]
SEEDS = [str(s) for s in config["seeds"]]
METHODS = list(config["prune"]["methods"])
SPARSITIES = [cfg.fmt_sparsity(s) for s in config["prune"]["sparsities"]]
# Methods whose prune job reads the sensitivity table.
SENSITIVITY_METHODS = {"mrpf"}
STUDIES = config["studies"]
OBJECTIVE = config["pretrain"]["objective"]
if "objectives" in STUDIES and cfg.method_spec(config, STUDIES["objectives"]["method"])["method"] in SENSITIVITY_METHODS:
    sys.exit("advprune: config key 'studies.objectives.method': methods that read the sensitivity table cannot be pretrained with other objectives yet")


wildcard_constraints:
    dataset="|".join(DATASETS),
    arch="|".join(ARCHS),
    seed=r"\d+",
    method="|".join(["dense", *METHODS]),
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
    labels = {} if method == "dense" else {"impl": cfg.method_spec(config, method)["method"]}
    for key, name in (("mode", "finetune_mode"), ("pre", "pretrain_objective"), ("ft", "finetune_objective")):
        if key in wildcards.keys():
            labels[name] = wildcards[key]
    return labels


def resume_path(wildcards, output):
    # Outside results/: Snakemake deletes a failed job's outputs, the resume state must survive.
    return f"resume/{output[0]}.state.pt"


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
                out += [pattern.format(**ids, method=m, sparsity=s) for m in METHODS for s in SPARSITIES]
    return out


def all_evaluations():
    return _runs("results/eval/{dataset}/{arch}/seed{seed}/dense/s0.json", False) + _runs(
        "results/eval/{dataset}/{arch}/seed{seed}/{method}/s{sparsity}.json", True
    )


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


def study_records():
    """Table name -> the evaluation records of that study (see _study_record)."""
    from snakemake.iocontainers import Wildcards

    def records(pattern, variants):
        out = []
        for run in _runs("{dataset}/{arch}/{seed}", False):
            dataset, arch, seed = run.split("/")
            for variant in variants:
                ids = dict(dataset=dataset, arch=arch, seed=seed, **variant)
                out.append(_study_record(pattern.format(**ids), Wildcards(fromdict=ids)))
        return out

    tables = {"study_finetune": [], "study_objectives": []}
    if "finetune" in STUDIES:
        study = STUDIES["finetune"]
        variants = [dict(method=m, sparsity=cfg.fmt_sparsity(study["sparsity"]), mode=mode) for m in study["methods"] for mode in study["modes"]]
        tables["study_finetune"] = records("results/studies/finetune/{dataset}/{arch}/seed{seed}/{method}/s{sparsity}/{mode}/eval.json", variants)
    if "objectives" in STUDIES:
        study = STUDIES["objectives"]
        dense = [dict(pre=pre) for pre in dict.fromkeys(pre for pre, _ in study["pairs"])]
        pruned = [dict(pre=pre, ft=ft, method=study["method"], sparsity=cfg.fmt_sparsity(study["sparsity"])) for pre, ft in study["pairs"]]
        tables["study_objectives"] = records("results/studies/objectives/{dataset}/{arch}/seed{seed}/{pre}/dense.json", dense) + records(
            "results/studies/objectives/{dataset}/{arch}/seed{seed}/{pre}/{method}/s{sparsity}/{ft}/eval.json", pruned
        )
    return tables


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
