rule sensitivity:
    input:
        model="results/pretrain/{dataset}/{arch}/seed{seed}/model.pt",
        data=data_files,
    output:
        "results/sensitivity/{dataset}/{arch}/seed{seed}/sensitivity.csv",
    params:
        settings=cfg.sensitivity_params(config),
        data_dir=data_dir,
        code=code("sensitivity.py"),
    log:
        "logs/sensitivity/{dataset}/{arch}/seed{seed}.log",
    benchmark:
        "results/benchmarks/sensitivity/{dataset}/{arch}/seed{seed}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=1,
    conda:
        "../../envs/advprune.yaml"
    script:
        "../../scripts/sensitivity.py"
