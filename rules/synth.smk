# Synth datasets (pipeline/synth): reference videos -> a plan (checkpoint) -> lossless segments per
# reference -> encoded + scored variants per shard of a reference -> a generic label file and videos
# folder, which the manifest then reads like any dataset's.
for _dataset in pipeline_workflow.synth_datasets(DATASETS, generated=True):

    rule:
        name:
            f"synth_references_{_dataset}"
        output:
            labels=str(Path(DATASETS[_dataset].references).parent / "labels.csv"),
            videos=directory(DATASETS[_dataset].references),
        log:
            str(paths.log("synth_references", _dataset)),
        benchmark:
            str(paths.benchmark("synth_references", _dataset))
        params:
            code=code_version("demo_data"),
            out=lambda w, output: str(Path(output.labels).parent),
            n=DATASETS[_dataset].generate["n_videos"],
            seed=DATASETS[_dataset].generate["seed"],
        threads: family_threads(f"synth_references_{_dataset}")
        resources:
            **family_resources(f"synth_references_{_dataset}"),
        conda:
            ENV
        shell:
            "lmmvqa demo-data --clean --out {params.out} --n-videos {params.n} --seed {params.seed} "
            "--workers {threads} > {log} 2>&1"


checkpoint synth_plan:
    input:
        references=lambda w: DATASETS[w.dataset].references,
        reference_labels=lambda w: DATASETS[w.dataset].reference_labels or [],
    output:
        plan=str(paths.synth_plan("{dataset}")),
        failures=str(paths.synth_plan_failures("{dataset}")),
    log:
        str(paths.log("synth_plan", "{dataset}")),
    wildcard_constraints:
        dataset=SYNTH_DATASETS,
    params:
        code=code_version("synth_plan"),
        settings=lambda w: pipeline_workflow.synth_settings(DATASETS[w.dataset]),
        state=lambda w: pipeline_workflow.references_state(DATASETS[w.dataset]),
        config=RESOLVED_CONFIG,
    threads: family_threads("synth_plan")
    resources:
        **family_resources("synth_plan"),
    conda:
        ENV
    shell:
        "lmmvqa synth-plan --config {params.config} --dataset {wildcards.dataset} --out {output.plan} "
        "--failures {output.failures} > {log} 2>&1"


rule synth_segments:
    input:
        plan=ancient(str(paths.synth_plan("{dataset}"))),
    output:
        segments=directory(str(paths.synth_segments("{dataset}", "{reference}"))),
    log:
        str(paths.log("synth_segments", "{dataset}", "{reference}")),
    benchmark:
        str(paths.benchmark("synth_segments", "{dataset}", "{reference}"))
    wildcard_constraints:
        dataset=SYNTH_DATASETS,
    params:
        code=code_version("synth_segments"),
        digest=synth_segment_digest,
        config=RESOLVED_CONFIG,
    threads: family_threads("synth_segments")
    resources:
        **family_resources("synth_segments"),
    conda:
        ENV
    shell:
        "lmmvqa synth-segments --config {params.config} --dataset {wildcards.dataset} --plan {input.plan} "
        "--reference {wildcards.reference} --out {output.segments} > {log} 2>&1"


rule synth_variants:
    input:
        plan=ancient(str(paths.synth_plan("{dataset}"))),
        segments=str(paths.synth_segments("{dataset}", "{reference}")),
    output:
        shard=directory(str(paths.synth_shard("{dataset}", "{reference}", "{shard}"))),
    log:
        str(paths.log("synth_variants", "{dataset}", "{reference}", "{shard}")),
    benchmark:
        str(paths.benchmark("synth_variants", "{dataset}", "{reference}", "{shard}"))
    wildcard_constraints:
        dataset=SYNTH_DATASETS,
    params:
        code=code_version("synth_variants"),
        digest=synth_shard_digest,
    # variants encoded + scored at once, each by single-threaded ffmpeg processes
    threads: family_threads("synth_variants")
    resources:
        **family_resources("synth_variants"),
    conda:
        ENV
    shell:
        "lmmvqa synth-variants --plan {input.plan} --reference {wildcards.reference} --shard {wildcards.shard} "
        "--segments {input.segments} --out {output.shard} --threads {threads} > {log} 2>&1"


rule synth_labels:
    input:
        segments=synth_segment_dirs,
        shards=synth_shard_dirs,
        plan=ancient(str(paths.synth_plan("{dataset}"))),
        plan_failures=ancient(str(paths.synth_plan_failures("{dataset}"))),
    output:
        labels=str(paths.synth_labels("{dataset}")),
        failures=str(paths.synth_failures("{dataset}")),
        videos=directory(str(paths.synth_videos("{dataset}"))),
    log:
        str(paths.log("synth_labels", "{dataset}")),
    wildcard_constraints:
        dataset=SYNTH_DATASETS,
    params:
        code=code_version("synth_labels"),
        metric=lambda w: DATASETS[w.dataset].synth["metric"],
        config=RESOLVED_CONFIG,
    threads: family_threads("synth_labels")
    resources:
        **family_resources("synth_labels"),
    conda:
        ENV
    shell:
        "lmmvqa synth-labels --config {params.config} --dataset {wildcards.dataset} --plan {input.plan} "
        "--plan-failures {input.plan_failures} --segments {input.segments} --shards {input.shards} "
        "--labels {output.labels} --failures {output.failures} --videos {output.videos} > {log} 2>&1"
