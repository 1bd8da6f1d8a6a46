# LMM-VQA workflow: videos + MOS -> features -> prompts -> model -> scores, metrics, report.
# All logic lives in the `pipeline` package; every rule runs one `lmmvqa` command.
configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/features.smk"
include: "rules/prompts.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    input:
        all_targets(),
    default_target: True
