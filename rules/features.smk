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


rule feature_stats:
    input:
        stores=lambda w: store_paths(w.dataset),
        probes=lambda w: probe_paths(w.dataset),
    output:
        "results/stats/{dataset}.json",
    log:
        "results/logs/feature_stats/{dataset}.log",
    params:
        code=code_version("feature_stats"),
        settings=SETTINGS,
        address=config["dask"]["address"] or "",
        config=RESOLVED_CONFIG,
    threads: 2
    resources:
        mem_mb=2000,
    conda:
        ENV
    shell:
        "lmmvqa feature-stats --config {params.config} --dataset {wildcards.dataset} --out {output} > {log} 2>&1"
