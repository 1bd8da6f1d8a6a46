# The quality adapter of `models.vision.adapted` (docs/quality-encoder.md): learned from synth datasets'
# variants and their full-reference labels, one file named by its hash; extraction depends on it.
# A given adapter file (a path instead of settings) has no rule: extraction reads it as it is.
if SETTINGS_PLAN.adapter is not None and SETTINGS_PLAN.adapter.hash:

    rule adapt_encoder:
        input:
            labels=[str(paths.synth_labels(d)) for d in SETTINGS_PLAN.adapter.settings["datasets"]],
            videos=[str(paths.synth_videos(d)) for d in SETTINGS_PLAN.adapter.settings["datasets"]],
        output:
            str(paths.adapter("{adapter}")),
        log:
            str(paths.log("adapt_encoder", "{adapter}")),
        benchmark:
            str(paths.benchmark("adapt_encoder", "{adapter}"))
        wildcard_constraints:
            adapter=r"[0-9a-f]{10}",
        params:
            code=code_version("adapt_encoder"),
            settings=json.dumps(SETTINGS_PLAN.adapter.settings, sort_keys=True),
            device=SETTINGS_PLAN.device,
            config=RESOLVED_CONFIG,
        threads: family_threads("adapt_encoder")
        resources:
            **family_resources("adapt_encoder"),
        conda:
            ENV
        shell:
            "lmmvqa adapt-encoder --config {params.config} --out {output} --device {params.device} "
            "--threads {threads} > {log} 2>&1"
