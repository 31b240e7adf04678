rule pretrain:
    input:
        data=data_files,
        start=start_checkpoint,
    output:
        model="results/pretrain/{dataset}/{arch}/seed{seed}/model.pt",
        curve="results/pretrain/{dataset}/{arch}/seed{seed}/curve.csv",
    params:
        settings=pretrain_settings,
        data_dir=data_dir,
        resume=resume_path,
        code=code("pretrain.py"),
    log:
        "logs/pretrain/{dataset}/{arch}/seed{seed}.log",
    benchmark:
        "results/benchmarks/pretrain/{dataset}/{arch}/seed{seed}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=1440,
        gpu=1,
    conda:
        "../../envs/advprune.yaml"
    script:
        "../../scripts/pretrain.py"
