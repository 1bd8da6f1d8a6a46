# Feature extraction: one job per (dataset, shard); one Zarr store per job.


rule extract:
    input:
        manifest=ancient("results/manifest/{dataset}.csv"),
    output:
        store=directory("cache/features/{dataset}/{settings}/shard-{shard}.zarr"),
    log:
        "results/logs/extract/{dataset}/{settings}/{shard}.log",
    benchmark:
        "results/benchmarks/extract/{dataset}/{settings}/{shard}.tsv"
    params:
        code=code_version("extract"),
        digest=shard_digest,
        settings=json.dumps(feature_settings(config), sort_keys=True),
        videos=lambda w: videos_dir(w.dataset),
        device=config["device"],
        config=RESOLVED_CONFIG,
    threads: 2
    resources:
        mem_mb=6000,
        gpu=gpu_count("extract"),
    conda:
        ENV
    shell:
        "lmmvqa extract --config {params.config} --dataset {wildcards.dataset} "
        "--manifest {input.manifest} --videos {params.videos} --shard {wildcards.shard} "
        "--out {output.store} --device {params.device} --threads {threads} > {log} 2>&1"


rule features_done:
    input:
        all_probes_and_stores,
    output:
        touch("results/features.done"),
    log:
        "results/logs/features_done.log",
    localrule: True
