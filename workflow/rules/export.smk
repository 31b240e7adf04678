# The Adversarial Pruning benchmark's and RobustBench's submission files of every pruned model (config key
# `export.enabled`; what `advprune export` writes): converting checkpoints takes seconds and no GPU.
localrules:
    export,


rule export:
    input:
        unpack(export_inputs),
    output:
        directory("results/export"),
    params:
        models=cfg.export_items(config),
        settings=cfg.export_params(config),
        code=code("export.py"),
    log:
        "logs/export.log",
    benchmark:
        "results/benchmarks/export.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/advprune.yaml"
    script:
        "../../scripts/export.py"
