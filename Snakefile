# LMM-VQA workflow: videos + MOS -> features -> prompts -> model -> scores, metrics, report.
# All logic lives in the `pipeline` package; every rule runs one `lmmvqa` command.
# The embedded default, used when no --configfile is given (a --configfile replaces it instead of
# being merged into it, so a user's config never inherits the demo dataset).
if not config:

    configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/synth_inputs.smk"
include: "rules/synth.smk"
include: "rules/encoder.smk"
include: "rules/data.smk"
include: "rules/features.smk"
include: "rules/prompts.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    input:
        pipeline_workflow.targets(SETTINGS_PLAN),
    default_target: True
