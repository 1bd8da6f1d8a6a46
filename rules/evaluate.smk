# Scoring of each test selector of an experiment (`dataset:subset`, each on its own: lsvq:test and
# lsvq:test_1080p apart), with metrics; for `folds: all` experiments per fold, then aggregated over the folds.


rule evaluate:
    # one input function per name, each waiting for the manifest checkpoint as the store list does: the
    # command line names all three (one unpacked dict would leave every name unset in a dry run), and a
    # plain pattern would mark this job outdated before the checkpoint is resolved
    input:
        model=after_manifest(
            lambda w: pipeline_workflow.ensemble_model_dirs(EXPERIMENTS[w.experiment], wildcard_fold(w))
        ),
        prompts=after_manifest(lambda w: str(paths.prompts_dir(w.dataset))),
        stores=lambda w: store_paths(w.dataset),
    output:
        predictions=str(paths.predictions("{experiment}", TEST)),
        metrics=str(paths.metrics("{experiment}", TEST)),
    log:
        str(paths.log("evaluate", "{experiment}", "{dataset}", "{subset}")),
    benchmark:
        str(paths.benchmark("evaluate", "{experiment}", "{dataset}", "{subset}"))
    wildcard_constraints:
        experiment=SINGLE_EXPERIMENTS,
    params:
        code=code_version("evaluate"),
        evaluation=json.dumps(as_dict(SETTINGS_PLAN.evaluation), sort_keys=True),
        device=SETTINGS_PLAN.device,
        config=RESOLVED_CONFIG,
        fold=fold_option,
    threads: family_threads("evaluate")
    resources:
        **family_resources("evaluate"),
    conda:
        ENV
    shell:
        "lmmvqa evaluate --config {params.config} --experiment {wildcards.experiment} "
        "--test {wildcards.dataset}:{wildcards.subset} {params.fold} --model {input.model} --prompts {input.prompts} "
        "--stores {input.stores} --out {output.predictions} --metrics {output.metrics} --device {params.device} "
        "> {log} 2>&1"


use rule evaluate as evaluate_fold with:
    output:
        predictions=str(paths.predictions("{experiment}", TEST, "{fold}")),
        metrics=str(paths.metrics("{experiment}", TEST, "{fold}")),
    log:
        str(paths.log("evaluate", "{experiment}", paths.fold_part("{fold}"), "{dataset}", "{subset}")),
    benchmark:
        str(paths.benchmark("evaluate", "{experiment}", paths.fold_part("{fold}"), "{dataset}", "{subset}"))
    wildcard_constraints:
        experiment=FOLD_EXPERIMENTS,


# Every fold of a `folds: all` experiment on one test selector: each fold, mean / std / median over
# folds (metrics.json) and the folds' predictions pooled.
rule aggregate:
    input:
        unpack(fold_metrics),
    output:
        predictions=str(paths.predictions("{experiment}", TEST)),
        metrics=str(paths.metrics("{experiment}", TEST)),
    log:
        str(paths.log("aggregate", "{experiment}", "{dataset}", "{subset}")),
    wildcard_constraints:
        experiment=FOLD_EXPERIMENTS,
    params:
        code=code_version("aggregate"),
        config=RESOLVED_CONFIG,
    threads: family_threads("aggregate")
    resources:
        **family_resources("aggregate"),
    conda:
        ENV
    shell:
        "lmmvqa aggregate --config {params.config} --experiment {wildcards.experiment} "
        "--test {wildcards.dataset}:{wildcards.subset} --out {output.metrics} --predictions {output.predictions} "
        "> {log} 2>&1"
