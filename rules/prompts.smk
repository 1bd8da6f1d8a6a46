# Q&A prompt shards per dataset, and the tiny preset's tokenizer.


rule prompts:
    input:
        manifest=ancient(str(paths.manifest("{dataset}"))),
    output:
        directory(str(paths.prompts_dir("{dataset}"))),
    log:
        str(paths.log("prompts", "{dataset}")),
    benchmark:
        str(paths.benchmark("prompts", "{dataset}"))
    params:
        code=code_version("prompts"),
        digest=dataset_digest,
        prompts=json.dumps(as_dict(SETTINGS_PLAN.prompts), sort_keys=True),
        templates=pipeline_workflow.template_bank_digest(SETTINGS_PLAN.prompts),
        config=RESOLVED_CONFIG,
    threads: family_threads("prompts")
    resources:
        **family_resources("prompts"),
    conda:
        ENV
    shell:
        "lmmvqa prompts --config {params.config} --dataset {wildcards.dataset} "
        "--manifest {input.manifest} --out-dir {output} > {log} 2>&1"


rule tokenizer:
    input:
        prompts=[str(paths.prompts_dir(d)) for d in pipeline_workflow.rated_datasets(DATASETS)],
    output:
        directory(str(paths.tokenizer_dir())),
    log:
        str(paths.log("tokenizer")),
    benchmark:
        str(paths.benchmark("tokenizer"))
    params:
        code=code_version("tokenizer"),
        answer_format=SETTINGS_PLAN.prompts.answer_format,
    threads: family_threads("tokenizer")
    resources:
        **family_resources("tokenizer"),
    conda:
        ENV
    shell:
        "lmmvqa tokenizer --prompts {input.prompts} --answer-format {params.answer_format} --out {output} > {log} 2>&1"
