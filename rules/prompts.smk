# Q&A prompt shards per dataset, and the tiny preset's tokenizer.


rule prompts:
    input:
        manifest=ancient("results/manifest/{dataset}.csv"),
    output:
        directory("results/prompts/{dataset}"),
    log:
        "results/logs/prompts/{dataset}.log",
    params:
        code=code_version("prompts"),
        digest=dataset_digest,
        prompts=json.dumps(config["prompts"], sort_keys=True),
        templates=lambda w: template_bank_digest(),
        config=RESOLVED_CONFIG,
    resources:
        mem_mb=1000,
    conda:
        ENV
    shell:
        "lmmvqa prompts --config {params.config} --dataset {wildcards.dataset} "
        "--manifest {input.manifest} --out-dir {output} > {log} 2>&1"


rule tokenizer:
    input:
        prompts=[str(paths.prompts_dir(d)) for d in config["datasets"]],
    output:
        directory("results/tokenizer"),
    log:
        "results/logs/tokenizer.log",
    params:
        code=code_version("tokenizer"),
    resources:
        mem_mb=1000,
    conda:
        ENV
    shell:
        "lmmvqa tokenizer --prompts {input.prompts} --out {output} > {log} 2>&1"
