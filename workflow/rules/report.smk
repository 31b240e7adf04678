from collections import Counter

from advprune import staleness


# Before a run starts anything the tables or the report are built from, mark them stale (advprune/staleness.py):
# Snakemake deletes the outputs of every job it starts, and a run that fails or is stopped would otherwise leave
# tables and figures showing numbers that no record supports any more. aggregate and report remove the mark.
onstart:
    if not workflow.touch:  # `--touch` (advprune restore) runs no job
        planned = Counter(job.rule.name for job in workflow.dag.needrun_jobs())  # this run's jobs, from Snakemake's own DAG
        planned.pop("all", None)
        staleness.mark_stale("results/tables", {rule: n for rule, n in planned.items() if rule != "report"}, "aggregate")
        staleness.mark_stale(REPORT_DIR, planned, "report")


# Reading CSVs and drawing figures takes seconds and no GPU: on a cluster these run in the Snakemake process
# itself (the login node) instead of waiting in the queue.
localrules:
    aggregate,
    report,


rule aggregate:
    input:
        evals=all_evaluations(),
        sensitivity=all_sensitivity(),
        pretrain_curves=all_pretrain_curves(),
        finetune_curves=all_finetune_curves(),
        prune_infos=all_prune_infos(),
        studies=[record["path"] for records in study_records().values() for record in records],
    output:
        summary="results/tables/summary.csv",
        layer_sparsity="results/tables/layer_sparsity.csv",
        sensitivity="results/tables/sensitivity.csv",
        training_curves="results/tables/training_curves.csv",
        prune_curves="results/tables/prune_curves.csv",
        study_finetune="results/tables/study_finetune.csv",
        study_objectives="results/tables/study_objectives.csv",
        # per-point results of every record, for paired tests (findings)
        per_point="results/tables/per_point.csv",
        # HO-FMN's per-point distances of every record: the security curves are drawn from them
        distances="results/tables/distances.csv",
        provenance=report(
            "results/tables/provenance.csv",
            caption="../report/provenance.rst",
            category="Provenance",
            labels={"table": "provenance of every evaluated model"},
        ),
        # declared in dvc.yaml: `dvc metrics diff` / `dvc plots diff` between commits
        metrics="results/tables/summary.json",
        plots=directory("results/plots"),
        # the sha256 of every file read: `advprune publish` checks that the tables still match them
        sources=f"results/tables/{staleness.SOURCES}",
    params:
        studies=study_records(),
        code=code("aggregate.py"),
    log:
        "logs/aggregate.log",
    benchmark:
        "results/benchmarks/aggregate.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/advprune.yaml"
    script:
        "../../scripts/aggregate.py"


# Reads only the small tables: changing plotting code or a report setting re-runs this rule alone.
rule report:
    input:
        # the CSV tables only: the DVC metrics and plot files are for `dvc metrics/plots`, not for the figures
        [path for path in rules.aggregate.output if path.endswith(".csv")],
    output:
        annotated_report_outputs(),
        sources=f"{REPORT_DIR}/{staleness.SOURCES}",
    params:
        tables_dir=parent_dir_of_input,
        out_dir=common_dir_of_output,
        formats=config["report"]["formats"],
        dpi=config["report"]["dpi"],
        code=code("report.py"),
    log:
        "logs/report.log",
    benchmark:
        "results/benchmarks/report.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/advprune.yaml"
    script:
        "../../scripts/report.py"
