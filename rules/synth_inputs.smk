# Input functions of the synth rules (rules/synth.smk): what the workflow reads from a synth dataset's
# plan (its settings: pipeline/workflow.py).
from pipeline.synth import plan as synth_plan_table


wildcard_constraints:
    reference=r"[A-Za-z0-9][A-Za-z0-9_-]*",


SYNTH_DATASETS = pipeline_workflow.names_regex(pipeline_workflow.synth_datasets(DATASETS))


_SYNTH_PLANS = {}


def _synth_plan_entry(dataset):
    """(plan, segments digests, shard digests) of a synth dataset, read once per version of the plan."""
    path = checkpoints.synth_plan.get(dataset=dataset).output.plan
    key = (path, os.stat(path).st_mtime_ns)
    if dataset not in _SYNTH_PLANS or _SYNTH_PLANS[dataset][0] != key:
        table = synth_plan_table.read_plan(path)
        _SYNTH_PLANS[dataset] = (key, *synth_plan_table.job_digests(table))
    return _SYNTH_PLANS[dataset][1:]


def synth_segment_digest(wildcards):
    return _synth_plan_entry(wildcards.dataset)[0][wildcards.reference]


def synth_shard_digest(wildcards):
    return _synth_plan_entry(wildcards.dataset)[1][(wildcards.reference, int(wildcards.shard))]


def synth_segment_dirs(wildcards):
    """Every reference's segments folder of a synth dataset's plan."""
    return [str(paths.synth_segments(wildcards.dataset, r)) for r in _synth_plan_entry(wildcards.dataset)[0]]


def synth_shard_dirs(wildcards):
    """Every variant shard folder of a synth dataset's plan."""
    return [str(paths.synth_shard(wildcards.dataset, r, s)) for r, s in _synth_plan_entry(wildcards.dataset)[1]]
