# Feature extraction: one job per (dataset, shard); one Zarr store per job.


rule extract:
    input:
        manifest=ancient(str(paths.manifest("{dataset}"))),
        adapter=adapter_inputs,
    output:
        store=directory(str(paths.store("{dataset}", "{settings}", "{shard}"))),
    log:
        str(paths.log("extract", "{dataset}", "{settings}", "{shard}")),
    benchmark:
        str(paths.benchmark("extract", "{dataset}", "{settings}", "{shard}"))
    params:
        code=code_version("extract"),
        digest=shard_digest,
        settings=json.dumps(feature_settings(config), sort_keys=True),
        videos=lambda w: videos_dir(w.dataset),
        device=config["device"],
        config=RESOLVED_CONFIG,
    # the job's threads = its decode worker processes (features.decode_workers; else 2, or
    # --set-threads extract=N): the command gets them as --threads and starts that many decoders
    threads: max(2, config["features"]["decode_workers"] or 0)
    resources:
        # models + main process ~5 GB; each decode worker ~100-200 MB + 2 shared-memory frame slots
        mem_mb=lambda wildcards, threads: 5000 + 500 * threads,
        gpu=pipeline_workflow.gpu_count(config, "extract"),
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
        str(paths.stats("{dataset}")),
    log:
        str(paths.log("feature_stats", "{dataset}")),
    benchmark:
        str(paths.benchmark("feature_stats", "{dataset}"))
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
        "lmmvqa feature-stats --config {params.config} --dataset {wildcards.dataset} --stores {input.stores} "
        "--out {output} > {log} 2>&1"
