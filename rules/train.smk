# Training per experiment (per fold for `folds: all` experiments, plus their model on every fold), from
# cached features and prompt shards only. A two-stage experiment (`stage1:` set) trains
# `results/models/<E>.stage1` first (per fold: `<E>.stage1/fold<F>`, and `<E>.stage1/all`); an experiment
# with `init_from:` or a stage 1 continues from that model (pipeline.training.runs.continues_from).

pipeline_workflow.at_parse_time(SETTINGS_PLAN.check_experiments)


rule train_stage1:
    input:
        unpack(training_inputs),
    output:
        directory(str(paths.model_dir(pipeline_runs.run_name("{experiment}", 1)))),
    log:
        str(paths.log("train", pipeline_runs.run_name("{experiment}", 1))),
    benchmark:
        str(paths.benchmark("train", pipeline_runs.run_name("{experiment}", 1)))
    wildcard_constraints:
        experiment=SINGLE_EXPERIMENTS,
    params:
        code=code_version("train"),
        training=lambda w: json.dumps(as_dict(EXPERIMENTS[w.experiment].run_training(1)), sort_keys=True),
        experiment=lambda w: pipeline_workflow.training_experiment(EXPERIMENTS[w.experiment], DATASETS),
        llm=json.dumps(SETTINGS_PLAN.models["llm"].as_dict(), sort_keys=True),
        device=SETTINGS_PLAN.device,
        config=RESOLVED_CONFIG,
        fold=fold_option,
        inputs=lambda w, input: training_input_args(input),
    threads: family_threads("train_stage1")
    resources:
        **family_resources("train_stage1"),
    conda:
        ENV
    shell:
        "lmmvqa train --config {params.config} --experiment {wildcards.experiment} --stage1 {params.fold} "
        "--out {output} --device {params.device} {params.inputs} --resume > {log} 2>&1"


# Stage 1 of each fold of a `folds: all` experiment, and of its model on every fold.
use rule train_stage1 as train_stage1_fold with:
    output:
        directory(str(paths.model_dir(pipeline_runs.run_name("{experiment}", 1), "{fold}"))),
    log:
        str(paths.log("train", pipeline_runs.run_name("{experiment}", 1), paths.fold_part("{fold}"))),
    benchmark:
        str(paths.benchmark("train", pipeline_runs.run_name("{experiment}", 1), paths.fold_part("{fold}")))
    wildcard_constraints:
        experiment=FOLD_EXPERIMENTS,


use rule train_stage1 as train_stage1_all with:
    output:
        directory(str(paths.model_dir(pipeline_runs.run_name("{experiment}", 1), paths.FULL_MODEL))),
    log:
        str(paths.log("train", pipeline_runs.run_name("{experiment}", 1), paths.FULL_MODEL)),
    benchmark:
        str(paths.benchmark("train", pipeline_runs.run_name("{experiment}", 1), paths.FULL_MODEL))
    wildcard_constraints:
        experiment=FOLD_EXPERIMENTS,
    params:
        fold=f"--fold {paths.FULL_MODEL}",


rule train:
    input:
        unpack(training_inputs),
        init=run_init(),
    output:
        directory(str(paths.model_dir("{experiment}"))),
    log:
        str(paths.log("train", "{experiment}")),
    benchmark:
        str(paths.benchmark("train", "{experiment}"))
    wildcard_constraints:
        experiment=SINGLE_EXPERIMENTS,
    params:
        code=code_version("train"),
        training=lambda w: json.dumps(as_dict(EXPERIMENTS[w.experiment].run_training()), sort_keys=True),
        experiment=lambda w: pipeline_workflow.training_experiment(EXPERIMENTS[w.experiment], DATASETS),
        llm=json.dumps(SETTINGS_PLAN.models["llm"].as_dict(), sort_keys=True),
        device=SETTINGS_PLAN.device,
        config=RESOLVED_CONFIG,
        fold=fold_option,
        member=member_option,
        inputs=lambda w, input: training_input_args(input),
    threads: family_threads("train")
    resources:
        **family_resources("train"),
    conda:
        ENV
    shell:
        "lmmvqa launch --gpus {resources.gpu} -- train --config {params.config} "
        "--experiment {wildcards.experiment} {params.fold} {params.member} --out {output} --device {params.device} "
        "{params.inputs} --resume > {log} 2>&1"


# One model per fold of a `folds: all` experiment: the same job, holding out fold {fold}.
use rule train as train_fold with:
    output:
        directory(str(paths.model_dir("{experiment}", "{fold}"))),
    log:
        str(paths.log("train", "{experiment}", paths.fold_part("{fold}"))),
    benchmark:
        str(paths.benchmark("train", "{experiment}", paths.fold_part("{fold}")))
    wildcard_constraints:
        experiment=FOLD_EXPERIMENTS,


# And its model on every fold (nothing held out): the one to ship, results/models/<E>/all.
use rule train as train_all with:
    input:
        unpack(training_inputs),
        init=run_init(fold=paths.FULL_MODEL),
    output:
        directory(str(paths.model_dir("{experiment}", paths.FULL_MODEL))),
    log:
        str(paths.log("train", "{experiment}", paths.FULL_MODEL)),
    benchmark:
        str(paths.benchmark("train", "{experiment}", paths.FULL_MODEL))
    wildcard_constraints:
        experiment=FOLD_EXPERIMENTS,
    params:
        fold=f"--fold {paths.FULL_MODEL}",


# The other members of an ensemble (`experiments.<E>.ensemble: N`): member i (seed training.seed + i) is
# its own job, beside the experiment's own model (member 0); per fold for a `folds: all` experiment.
use rule train as train_member with:
    output:
        directory(str(paths.model_dir(pipeline_runs.member_run("{experiment}", "{member}")))),
    log:
        str(paths.log("train", pipeline_runs.member_run("{experiment}", "{member}"))),
    benchmark:
        str(paths.benchmark("train", pipeline_runs.member_run("{experiment}", "{member}")))
    wildcard_constraints:
        experiment=SINGLE_EXPERIMENTS,
        member=r"[1-9]\d*",


use rule train as train_fold_member with:
    output:
        directory(str(paths.model_dir(pipeline_runs.member_run("{experiment}", "{member}"), "{fold}"))),
    log:
        str(paths.log("train", pipeline_runs.member_run("{experiment}", "{member}"), paths.fold_part("{fold}"))),
    benchmark:
        str(paths.benchmark("train", pipeline_runs.member_run("{experiment}", "{member}"), paths.fold_part("{fold}")))
    wildcard_constraints:
        experiment=FOLD_EXPERIMENTS,
        member=r"[1-9]\d*",
