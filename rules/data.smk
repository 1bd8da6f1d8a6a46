# Demo data generation, manifests and probe tables.

for _dataset in pipeline_workflow.generated_datasets(DATASETS):

    rule:
        name:
            f"demo_data_{_dataset}"
        output:
            labels=DATASETS[_dataset].labels,
            videos=directory(DATASETS[_dataset].videos),
        log:
            str(paths.log("demo_data", _dataset)),
        benchmark:
            str(paths.benchmark("demo_data", _dataset))
        params:
            code=code_version("demo_data"),
            out=lambda w, output: str(Path(output.labels).parent),
            n=DATASETS[_dataset].generate["n_videos"],
            seed=DATASETS[_dataset].generate["seed"],
        threads: family_threads(f"demo_data_{_dataset}")
        resources:
            **family_resources(f"demo_data_{_dataset}"),
        conda:
            ENV
        shell:
            "lmmvqa demo-data --out {params.out} --n-videos {params.n} --seed {params.seed} "
            "--workers {threads} > {log} 2>&1"


checkpoint manifest:
    input:
        labels=lambda w: DATASETS[w.dataset].label_files,
        videos=lambda w: DATASETS[w.dataset].videos or [],
    output:
        manifest=str(paths.manifest("{dataset}")),
        missing=str(paths.missing("{dataset}")),
    log:
        str(paths.log("manifest", "{dataset}")),
    benchmark:
        str(paths.benchmark("manifest", "{dataset}"))
    params:
        code=code_version("manifest"),
        fmt=lambda w: DATASETS[w.dataset].label_format,
        videos=lambda w: f"--videos {DATASETS[w.dataset].videos}" if DATASETS[w.dataset].videos else "",
        split=lambda w: DATASETS[w.dataset].split.scheme,
        k=lambda w: DATASETS[w.dataset].split.k,
        seed=lambda w: DATASETS[w.dataset].split.seed,
        group_by=lambda w: pipeline_workflow.group_by_option(DATASETS[w.dataset]),
        mos_scale=lambda w: pipeline_workflow.mos_scale_option(DATASETS[w.dataset]),
        shard_size=SETTINGS_PLAN.features.shard_size,
        videos_state=lambda w: pipeline_workflow.videos_state(DATASETS[w.dataset]),
    threads: family_threads("manifest")
    resources:
        **family_resources("manifest"),
    conda:
        ENV
    shell:
        "lmmvqa manifest --format {params.fmt} --labels {input.labels} {params.videos} "
        "--out {output.manifest} --missing {output.missing} --shard-size {params.shard_size} --k {params.k} "
        "--seed {params.seed} {params.group_by} "
        "--split-scheme {params.split} {params.mos_scale} > {log} 2>&1"


rule probe:
    input:
        manifest=ancient(str(paths.manifest("{dataset}"))),
    output:
        table=str(paths.probe("{dataset}", "{shard}")),
        failures=str(paths.probe_failures("{dataset}", "{shard}")),
    log:
        str(paths.log("probe", "{dataset}", "{shard}")),
    benchmark:
        str(paths.benchmark("probe", "{dataset}", "{shard}"))
    params:
        code=code_version("probe"),
        digest=shard_digest,
        videos=lambda w: DATASETS[w.dataset].videos or "",
        deadline=SETTINGS_PLAN.features.sampling.decode_deadline.base_s,
    threads: family_threads("probe")
    resources:
        **family_resources("probe"),
    conda:
        ENV
    shell:
        "lmmvqa probe --manifest {input.manifest} --videos {params.videos} --shard {wildcards.shard} "
        "--out {output.table} --failures {output.failures} --deadline {params.deadline} > {log} 2>&1"
