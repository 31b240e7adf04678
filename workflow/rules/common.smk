# Config loading and validation, wildcard constraints and every input/param function of the workflow.
import os
import sys

from advprune import config as cfg
from advprune.codehash import code_hash

try:
    cfg.validate(config)
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


wildcard_constraints:
    dataset="|".join(DATASETS),
    arch="|".join(ARCHS),
    seed=r"\d+",
    method="|".join(["dense", *METHODS]),
    sparsity=r"[0-9.]+",


def code(script):
    """Hash of a script and the advprune modules it imports: a rerun trigger for library changes."""
    return code_hash(f"{SCRIPTS}/{script}")


def prune_code(wildcards):
    # Each method lives in advprune/pruning/<name>.py: editing one method re-runs only its own jobs.
    method = cfg.method_spec(config, wildcards.method)["method"]
    return code_hash(f"{SCRIPTS}/prune.py", extra_modules=(f"advprune.pruning.{method}",))


DATA_ROOT = config["data"]["root"]


def data_dir(wildcards):
    return cfg.fetch_params(config, wildcards.dataset)["out_dir"]


def raw_dir(wildcards):
    return cfg.fetch_params(config, wildcards.dataset)["raw_dir"]


def data_files(wildcards):
    root = data_dir(wildcards)
    return [f"{root}/meta.json"] + [f"{root}/{split}_{xy}.npy" for split in ("train", "val", "test") for xy in "xy"]


def pretrain_settings(wildcards):
    return cfg.pretrain_params(config, wildcards.arch)


def prune_settings(wildcards):
    return cfg.prune_params(config, wildcards.method)


def resume_path(wildcards, output):
    # Outside results/: Snakemake deletes a failed job's outputs, the resume state must survive.
    return f"resume/{output[0]}.state.pt"


def resume_prefix(wildcards, output):
    # Methods that train keep one resume state per phase: {prefix}.{phase}.state.pt
    return f"resume/{output[0]}"


def prune_inputs(wildcards):
    inputs = {
        "model": "results/pretrain/{dataset}/{arch}/seed{seed}/model.pt".format(**wildcards),
        "data": data_files(wildcards),
    }
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


REPORT_DIR = "results/report"


def parent_dir_of_input(wildcards, input):
    return os.path.dirname(input[0])


def common_dir_of_output(wildcards, output):
    return os.path.commonpath(list(output))


def report_outputs():
    from advprune.report import expected_outputs

    return expected_outputs(REPORT_DIR, config["report"]["formats"])
