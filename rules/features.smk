# Feature extraction: one job per (dataset, shard); one Zarr store per job.


rule extract:
    input:
        manifest=ancient(str(paths.manifest("{dataset}"))),
        adapter=pipeline_workflow.adapter_inputs(SETTINGS_PLAN),
    output:
        store=directory(str(paths.store("{dataset}", "{settings}", "{shard}"))),
    log:
        str(paths.log("extract", "{dataset}", "{settings}", "{shard}")),
    benchmark:
        str(paths.benchmark("extract", "{dataset}", "{settings}", "{shard}"))
    # only this config's feature hash: a store path of other settings has no rule (it would get these features)
    wildcard_constraints:
        settings=SETTINGS_PLAN.features.hash,
    params:
        code=code_version("extract"),
        digest=shard_digest,
        settings=json.dumps(SETTINGS_PLAN.features.hashed(), sort_keys=True),
        videos=lambda w: DATASETS[w.dataset].videos or "",
        device=SETTINGS_PLAN.device,
        config=RESOLVED_CONFIG,
    # the job's threads = its decode worker processes (features.decode_workers, else the extract family's,
    # pipeline/core/resources.py; capped at --cores on one machine): the command gets them as --threads
    threads: family_threads("extract")
    resources:
        **family_resources("extract"),
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
        settings=SETTINGS_PLAN.features.hash,
        address=SETTINGS_PLAN.dask_address or "",
        config=RESOLVED_CONFIG,
    threads: family_threads("feature_stats")
    resources:
        **family_resources("feature_stats"),
    conda:
        ENV
    shell:
        "lmmvqa feature-stats --config {params.config} --dataset {wildcards.dataset} --stores {input.stores} "
        "--out {output} > {log} 2>&1"
