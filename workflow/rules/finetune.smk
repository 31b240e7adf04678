rule finetune:
    input:
        model="results/prune/{dataset}/{arch}/seed{seed}/{method}/s{sparsity}/model.pt",
        data=data_files,
    output:
        model="results/finetune/{dataset}/{arch}/seed{seed}/{method}/s{sparsity}/model.pt",
        curve="results/finetune/{dataset}/{arch}/seed{seed}/{method}/s{sparsity}/curve.csv",
    params:
        settings=finetune_settings,
        data_dir=data_dir,
        resume=resume_path,
        code=code("finetune.py"),
    log:
        "logs/finetune/{dataset}/{arch}/seed{seed}/{method}/s{sparsity}.log",
    benchmark:
        "results/benchmarks/finetune/{dataset}/{arch}/seed{seed}/{method}/s{sparsity}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=1440,
        gpu=1,
    conda:
        "../../envs/advprune.yaml"
    script:
        "../../scripts/finetune.py"
