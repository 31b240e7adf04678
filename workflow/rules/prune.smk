rule prune:
    input:
        unpack(prune_inputs),
    output:
        model="results/prune/{dataset}/{arch}/seed{seed}/{method}/s{sparsity}/model.pt",
        info="results/prune/{dataset}/{arch}/seed{seed}/{method}/s{sparsity}/info.json",
    params:
        settings=prune_settings,
        data_dir=data_dir,
        code=prune_code,
        resume_prefix=resume_prefix,
    log:
        "logs/prune/{dataset}/{arch}/seed{seed}/{method}/s{sparsity}.log",
    benchmark:
        "results/benchmarks/prune/{dataset}/{arch}/seed{seed}/{method}/s{sparsity}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=1,
    conda:
        "../../envs/advprune.yaml"
    script:
        "../../scripts/prune.py"
