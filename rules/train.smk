# Training per experiment (per fold for `folds: all` experiments), from cached features and prompt
# shards only.


rule train:
    input:
        unpack(training_inputs),
    output:
        directory("results/models/{experiment}"),
    log:
        "results/logs/train/{experiment}.log",
    benchmark:
        "results/benchmarks/train/{experiment}.tsv"
    wildcard_constraints:
        experiment=SINGLE_EXPERIMENTS,
    params:
        code=code_version("train"),
        training=json.dumps(config["training"], sort_keys=True),
        experiment=lambda w: json.dumps(config["experiments"][w.experiment], sort_keys=True),
        llm=json.dumps(model_spec(config, "llm"), sort_keys=True),
        device=config["device"],
        config=RESOLVED_CONFIG,
        fold=fold_option,
    threads: 2
    resources:
        mem_mb=8000,
        gpu=gpu_count("train"),
    conda:
        ENV
    shell:
        "lmmvqa train --config {params.config} --experiment {wildcards.experiment} {params.fold} --out {output} "
        "--device {params.device} --resume > {log} 2>&1"


# One model per fold of a `folds: all` experiment: the same job, holding out fold {fold}.
use rule train as train_fold with:
    output:
        directory("results/models/{experiment}/fold{fold}"),
    log:
        "results/logs/train/{experiment}/fold{fold}.log",
    benchmark:
        "results/benchmarks/train/{experiment}/fold{fold}.tsv"
    wildcard_constraints:
        experiment=FOLD_EXPERIMENTS,
