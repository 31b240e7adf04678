# advprune: fetch data -> adversarial pretraining -> sensitivity -> prune (method x sparsity) -> fine-tune
#           -> evaluate (clean, PGD, AutoAttack) -> aggregate -> report.
from snakemake.utils import min_version

min_version("9.0")


# A config given with --configfile replaces the embedded default rather than being merged into it: Snakemake
# merges mappings, so the default's methods and studies would otherwise join every other config's.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


# `snakemake --report report.html`: one self-contained HTML file with every figure and table, captions, and the
# run's provenance.
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/sensitivity.smk"
include: "workflow/rules/prune.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/studies.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/external.smk"
include: "workflow/rules/export.smk"


# The report, and everything it is built from (see computed_outputs): a missing or deleted intermediate is planned again.
rule all:
    default_target: True
    input:
        rules.report.output,
        rules.aggregate.output,
        rules.aggregate.input,
        computed_outputs(),
        export_outputs(),
