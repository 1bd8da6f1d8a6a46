# Training per experiment, from cached features and prompt shards only.


rule train:
    input:
        unpack(training_inputs),
    output:
        directory("results/models/{experiment}"),
    log:
        "results/logs/train/{experiment}.log",
    benchmark:
        "results/benchmarks/train/{experiment}.tsv"
    params:
        code=code_version("train"),
        training=json.dumps(config["training"], sort_keys=True),
        experiment=lambda w: json.dumps(config["experiments"][w.experiment], sort_keys=True),
        llm=json.dumps(model_spec(config, "llm"), sort_keys=True),
        device=config["device"],
        config=RESOLVED_CONFIG,
    threads: 2
    resources:
        mem_mb=8000,
        gpu=gpu_count("train"),
    conda:
        ENV
    shell:
        "lmmvqa launch --gpus {resources.gpu} -- train --config {params.config} "
        "--experiment {wildcards.experiment} --out {output} --device {params.device} --resume > {log} 2>&1"
