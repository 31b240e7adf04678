rule evaluate:
    input:
        model=evaluated_model,
        data=data_files,
    output:
        "results/eval/{dataset}/{arch}/seed{seed}/{method}/s{sparsity}.json",
    params:
        settings=cfg.evaluate_params(config),
        data_dir=data_dir,
        labels=eval_labels,
        code=code("evaluate.py"),
        resume=autoattack_state,
    log:
        "logs/evaluate/{dataset}/{arch}/seed{seed}/{method}/s{sparsity}.log",
    benchmark:
        "results/benchmarks/evaluate/{dataset}/{arch}/seed{seed}/{method}/s{sparsity}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=1,
    conda:
        "../../envs/advprune.yaml"
    script:
        "../../scripts/evaluate.py"
