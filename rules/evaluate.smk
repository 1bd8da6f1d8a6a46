# Scoring of each test dataset of an experiment, metrics, and the experiment table.


rule evaluate:
    input:
        unpack(evaluation_inputs),
    output:
        predictions="results/eval/{experiment}/{dataset}/predictions.csv",
        metrics="results/eval/{experiment}/{dataset}/metrics.json",
    log:
        "results/logs/evaluate/{experiment}/{dataset}.log",
    benchmark:
        "results/benchmarks/evaluate/{experiment}/{dataset}.tsv"
    params:
        code=code_version("evaluate"),
        evaluation=json.dumps(config["evaluation"], sort_keys=True),
        device=config["device"],
        config=RESOLVED_CONFIG,
    threads: 2
    resources:
        mem_mb=8000,
        gpu=gpu_count("evaluate"),
    conda:
        ENV
    shell:
        "lmmvqa evaluate --config {params.config} --experiment {wildcards.experiment} "
        "--dataset {wildcards.dataset} --out {output.predictions} --device {params.device} > {log} 2>&1"
