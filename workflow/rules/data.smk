rule fetch_data:
    output:
        meta=f"{DATA_ROOT}/{{dataset}}/meta.json",
        arrays=expand(f"{DATA_ROOT}/{{{{dataset}}}}/{{split}}_{{xy}}.npy", split=["train", "val", "test"], xy=["x", "y"]),
    params:
        raw_dir=raw_dir,
        out_dir=data_dir,
        val_fraction=config["data"]["val_fraction"],
        split_seed=config["data"]["split_seed"],
        download=config["data"]["download"],
        code=code("fetch_data.py"),
    log:
        "logs/fetch_data/{dataset}.log",
    benchmark:
        "results/benchmarks/fetch_data/{dataset}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        "../../envs/advprune.yaml"
    script:
        "../../scripts/fetch_data.py"
