# Demo data generation, manifests and probe tables.

for _dataset in generated_datasets():

    rule:
        name:
            f"demo_data_{_dataset}"
        output:
            labels=dataset_cfg(_dataset)["labels"],
            videos=directory(dataset_cfg(_dataset)["videos"]),
        log:
            str(paths.log("demo_data", _dataset)),
        benchmark:
            str(paths.benchmark("demo_data", _dataset))
        params:
            code=code_version("demo_data"),
            out=lambda w, output: str(Path(output.labels).parent),
            n=dataset_cfg(_dataset)["generate"]["n_videos"],
            seed=dataset_cfg(_dataset)["generate"]["seed"],
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
        labels=lambda w: label_files(w.dataset),
        videos=lambda w: videos_dir(w.dataset) or [],
    output:
        manifest=str(paths.manifest("{dataset}")),
        missing=str(paths.missing("{dataset}")),
    log:
        str(paths.log("manifest", "{dataset}")),
    benchmark:
        str(paths.benchmark("manifest", "{dataset}"))
    params:
        code=code_version("manifest"),
        fmt=lambda w: pipeline_workflow.label_format(config, w.dataset),
        videos=lambda w: f"--videos {videos_dir(w.dataset)}" if videos_dir(w.dataset) else "",
        split=lambda w: dataset_cfg(w.dataset)["split"]["scheme"],
        k=lambda w: dataset_cfg(w.dataset)["split"]["k"],
        seed=lambda w: dataset_cfg(w.dataset)["split"]["seed"],
        group_by=lambda w: (
            f"--group-by {dataset_cfg(w.dataset)['split']['group_by']}"
            if dataset_cfg(w.dataset)["split"]["group_by"]
            else ""
        ),
        mos_scale=lambda w: (
            f"--mos-scale {dataset_cfg(w.dataset)['mos_scale']}"
            if dataset_cfg(w.dataset)["mos_scale"]
            else ""
        ),
        shard_size=config["features"]["shard_size"],
        videos_state=lambda w: videos_state(w.dataset),
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
        videos=lambda w: videos_dir(w.dataset),
        deadline=config["sampling"]["decode_deadline"]["base_s"],
    threads: family_threads("probe")
    resources:
        **family_resources("probe"),
    conda:
        ENV
    shell:
        "lmmvqa probe --manifest {input.manifest} --videos {params.videos} --shard {wildcards.shard} "
        "--out {output.table} --failures {output.failures} --deadline {params.deadline} > {log} 2>&1"
