# A checkpoint made elsewhere (config key `external`), read into our architecture: strictly, its scores folded,
# its claimed sparsity checked, dead channels removed (advprune/interop/layouts.py); `evaluate` then takes it
# like one of ours.
rule import_external:
    input:
        checkpoint=external_checkpoint,
        data=data_files,
    output:
        "results/external/{dataset}/{arch}/{method}/s{sparsity}/model.pt",
    params:
        settings=external_settings,
        data_dir=data_dir,
        code=code("import_external.py"),
    log:
        "logs/import_external/{dataset}/{arch}/{method}/s{sparsity}.log",
    benchmark:
        "results/benchmarks/import_external/{dataset}/{arch}/{method}/s{sparsity}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/advprune.yaml"
    script:
        "../../scripts/import_external.py"
