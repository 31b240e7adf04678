# Studies beside the main grid. They reuse the main pipeline's jobs wherever the settings are the same
# (input functions in common.smk) and run only the variants:
#  - finetune: criterion x fine-tuning mode (none | natural | adversarial) at one sparsity;
#  - objectives: pretraining x fine-tuning objective pairs (Sehwag et al. 2019) at one sparsity.


rule study_finetune:
    input:
        model=pruned_model,
        data=data_files,
    output:
        model="results/studies/finetune/{dataset}/{arch}/seed{seed}/{method}/s{sparsity}/{mode}/model.pt",
        curve="results/studies/finetune/{dataset}/{arch}/seed{seed}/{method}/s{sparsity}/{mode}/curve.csv",
    params:
        settings=finetune_settings,
        data_dir=data_dir,
        resume=resume_path,
        code=code("finetune.py"),
    log:
        "logs/studies/finetune/{dataset}/{arch}/seed{seed}/{method}/s{sparsity}/{mode}/finetune.log",
    benchmark:
        "results/benchmarks/studies/finetune/{dataset}/{arch}/seed{seed}/{method}/s{sparsity}/{mode}/finetune.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=1440,
        gpu=1,
    conda:
        "../../envs/advprune.yaml"
    script:
        "../../scripts/finetune.py"


rule study_finetune_evaluate:
    input:
        model=finetuned_model,
        data=data_files,
    output:
        "results/studies/finetune/{dataset}/{arch}/seed{seed}/{method}/s{sparsity}/{mode}/eval.json",
    params:
        settings=cfg.evaluate_params(config),
        data_dir=data_dir,
        labels=eval_labels,
        code=code("evaluate.py"),
        resume=autoattack_state,
    log:
        "logs/studies/finetune/{dataset}/{arch}/seed{seed}/{method}/s{sparsity}/{mode}/evaluate.log",
    benchmark:
        "results/benchmarks/studies/finetune/{dataset}/{arch}/seed{seed}/{method}/s{sparsity}/{mode}/evaluate.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=1,
    conda:
        "../../envs/advprune.yaml"
    script:
        "../../scripts/evaluate.py"


rule study_objectives_pretrain:
    input:
        data=data_files,
    output:
        model="results/studies/objectives/{dataset}/{arch}/seed{seed}/{pre}/pretrain/model.pt",
        curve="results/studies/objectives/{dataset}/{arch}/seed{seed}/{pre}/pretrain/curve.csv",
    params:
        settings=lambda w: cfg.pretrain_params(config, w.arch, w.pre, dataset=w.dataset),
        data_dir=data_dir,
        resume=resume_path,
        code=code("pretrain.py"),
    log:
        "logs/studies/objectives/{dataset}/{arch}/seed{seed}/{pre}/pretrain.log",
    benchmark:
        "results/benchmarks/studies/objectives/{dataset}/{arch}/seed{seed}/{pre}/pretrain.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=1440,
        gpu=1,
    conda:
        "../../envs/advprune.yaml"
    script:
        "../../scripts/pretrain.py"


rule study_objectives_prune:
    input:
        unpack(prune_inputs),
    output:
        model="results/studies/objectives/{dataset}/{arch}/seed{seed}/{pre}/{method}/s{sparsity}/prune/model.pt",
        info="results/studies/objectives/{dataset}/{arch}/seed{seed}/{pre}/{method}/s{sparsity}/prune/info.json",
    params:
        settings=prune_settings,
        data_dir=data_dir,
        code=prune_code,
        resume_prefix=resume_prefix,
    log:
        "logs/studies/objectives/{dataset}/{arch}/seed{seed}/{pre}/{method}/s{sparsity}/prune.log",
    benchmark:
        "results/benchmarks/studies/objectives/{dataset}/{arch}/seed{seed}/{pre}/{method}/s{sparsity}/prune.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=1,
    conda:
        "../../envs/advprune.yaml"
    script:
        "../../scripts/prune.py"


rule study_objectives_finetune:
    input:
        model=pruned_model,
        data=data_files,
    output:
        model="results/studies/objectives/{dataset}/{arch}/seed{seed}/{pre}/{method}/s{sparsity}/{ft}/model.pt",
        curve="results/studies/objectives/{dataset}/{arch}/seed{seed}/{pre}/{method}/s{sparsity}/{ft}/curve.csv",
    params:
        settings=finetune_settings,
        data_dir=data_dir,
        resume=resume_path,
        code=code("finetune.py"),
    log:
        "logs/studies/objectives/{dataset}/{arch}/seed{seed}/{pre}/{method}/s{sparsity}/{ft}/finetune.log",
    benchmark:
        "results/benchmarks/studies/objectives/{dataset}/{arch}/seed{seed}/{pre}/{method}/s{sparsity}/{ft}/finetune.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=1440,
        gpu=1,
    conda:
        "../../envs/advprune.yaml"
    script:
        "../../scripts/finetune.py"


rule study_objectives_evaluate:
    input:
        model=finetuned_model,
        data=data_files,
    output:
        "results/studies/objectives/{dataset}/{arch}/seed{seed}/{pre}/{method}/s{sparsity}/{ft}/eval.json",
    params:
        settings=cfg.evaluate_params(config),
        data_dir=data_dir,
        labels=eval_labels,
        code=code("evaluate.py"),
        resume=autoattack_state,
    log:
        "logs/studies/objectives/{dataset}/{arch}/seed{seed}/{pre}/{method}/s{sparsity}/{ft}/evaluate.log",
    benchmark:
        "results/benchmarks/studies/objectives/{dataset}/{arch}/seed{seed}/{pre}/{method}/s{sparsity}/{ft}/evaluate.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=1,
    conda:
        "../../envs/advprune.yaml"
    script:
        "../../scripts/evaluate.py"


rule study_objectives_evaluate_dense:
    input:
        model=pretrained_model,
        data=data_files,
    output:
        "results/studies/objectives/{dataset}/{arch}/seed{seed}/{pre}/dense.json",
    params:
        settings=cfg.evaluate_params(config),
        data_dir=data_dir,
        labels=lambda w: {"pretrain_objective": w.pre},
        code=code("evaluate.py"),
        resume=autoattack_state,
    log:
        "logs/studies/objectives/{dataset}/{arch}/seed{seed}/{pre}/evaluate_dense.log",
    benchmark:
        "results/benchmarks/studies/objectives/{dataset}/{arch}/seed{seed}/{pre}/evaluate_dense.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=1,
    conda:
        "../../envs/advprune.yaml"
    script:
        "../../scripts/evaluate.py"
