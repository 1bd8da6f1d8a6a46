"""pipeline/workflow.py: what the Snakefile decides from the resolved plan, tested without Snakemake."""
from __future__ import annotations

import json
import os

import pytest
import yaml
from conftest import REPO

from pipeline import workflow
from pipeline.core import paths
from pipeline.core.errors import UserError


def _cfg(**overrides):
    raw = {
        "datasets": {
            "demo": {"format": "generic", "labels": "l.csv", "videos": "v"},
            "lsvq": {"format": "lsvq", "labels": "x.csv", "videos": "w"},
        },
        "experiments": {"e": {"train": ["demo:train"], "test": ["demo:test", "lsvq:test"]}},
    }
    raw.update(overrides)
    return workflow.load(raw)


def _plan(**overrides):
    """The resolved plan of `_cfg(**overrides)`, as the Snakefile resolves it."""
    return workflow.resolve_plan(_cfg(**overrides))


def test_load_validates_once_and_names_the_bad_key():
    with pytest.raises(UserError, match="no_such_key"):
        workflow.load({"no_such_key": 1})


def test_gpu_count_per_stage_and_device():
    cpu = _plan(device="cpu")
    assert [workflow.gpu_count(cpu, s) for s in ("extract", "train", "evaluate")] == [0, 0, 0]
    gpu = _plan(device="cuda", training={"gpus": 4})
    assert [workflow.gpu_count(gpu, s) for s in ("extract", "train", "evaluate", "report")] == [1, 4, 1, 0]
    assert workflow.gpu_count(_plan(device="auto"), "extract") == 1


def test_tokenizer_needed_only_for_a_random_init_llm():
    assert _plan(models={"preset": "tiny"}).trains_tokenizer
    assert not _plan(models={"preset": "tiny", "llm": {"source": "some/hub-id"}}).trains_tokenizer


def test_targets_and_tests():
    s = _plan()
    assert workflow.experiment_tests(s.experiments) == [("e", "demo:test"), ("e", "lsvq:test")]
    assert workflow.targets(s) == [str(paths.manifest("demo")), str(paths.manifest("lsvq")),
                                     str(paths.metrics("e", "demo:test")), str(paths.metrics("e", "lsvq:test")),
                                     str(paths.experiment_table("e")), str(paths.report())]
    assert workflow.model_dirs(s.experiments) == [str(paths.model_dir("e"))]
    assert workflow.names_regex([]) == "(?!)" and workflow.names_regex(["b", "a"]) == "a|b"


def test_resolved_config_is_rewritten_only_when_it_changes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _cfg()
    path = workflow.write_resolved_config(workflow.resolve_plan(cfg))
    assert yaml.safe_load(open(path)) == cfg
    os.utime(path, ns=(1, 1))
    workflow.write_resolved_config(workflow.resolve_plan(cfg))
    assert os.stat(path).st_mtime_ns == 1  # same content: untouched, so it triggers nothing
    workflow.write_resolved_config(_plan(device="cuda"))
    assert os.stat(path).st_mtime_ns != 1 and yaml.safe_load(open(path))["device"] == "cuda"
    assert [p.name for p in paths.resolved_config().parent.iterdir()] == ["config.resolved.yaml"]


def test_template_bank_digest_follows_the_file(tmp_path):
    bank = tmp_path / "bank.yaml"
    bank.write_text("a: 1\n")
    prompts = _plan(prompts={"templates": str(bank)}).prompts
    first = workflow.template_bank_digest(prompts)
    bank.write_text("a: 2\n")
    assert workflow.template_bank_digest(prompts) != first and len(first) == 12
    assert workflow.template_bank(_plan().prompts).exists()  # the packaged bank


def test_folds_all_ships_a_model_trained_on_every_fold():
    from pipeline.prompts.selectors import shipped_model

    s = _plan(experiments={"cv": {"train": ["demo:train"], "test": ["demo:test", "lsvq:test"], "folds": "all"},
                           "one": {"train": ["demo:train"], "test": ["demo:test"]}})
    k = s.datasets["demo"].split.k
    assert workflow.folds(s.experiments) == {"cv": list(range(k))}
    assert workflow.model_dirs(s.experiments) == [*(str(paths.model_dir("cv", f)) for f in range(k)),
                                                  "results/models/cv/all", "results/models/one"]
    assert str(shipped_model(s.experiments["cv"])) == "results/models/cv/all"
    assert str(shipped_model(s.experiments["one"])) == "results/models/one"
    with pytest.raises(UserError, match="share videos"):
        workflow.experiment_tests(_plan(experiments={"e": {"train": ["demo:train"],
                                                           "test": ["demo:all", "demo:test"]}}).experiments)


def test_score_without_a_model_finds_the_shipped_one_or_names_the_command(tmp_path, monkeypatch):
    import json

    from pipeline.evaluation.score_files import default_model

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="no config at config.yaml"):
        default_model()
    raw = {"datasets": {"demo": {"format": "generic", "labels": "l.csv"}},
           "experiments": {"cv": {"train": ["demo:train"], "test": ["demo:test"], "folds": "all"}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match=r"no trained model in results/models/cv/all .*`snakemake "
                                        r"results/models/cv/all --cores 2`"):
        default_model()
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(raw))
    # the target before --configfile, which would take it for a second config file
    with pytest.raises(UserError, match=r"`snakemake results/models/cv/all --cores 2 --configfile mine.yaml`"):
        default_model("mine.yaml")
    (tmp_path / "results/models/cv/all").mkdir(parents=True)
    (tmp_path / "results/models/cv/all/lmmvqa.json").write_text("{}")
    metrics = paths.metrics("cv", "demo:test")
    metrics.parent.mkdir(parents=True)
    metrics.write_text(json.dumps({"n": 50, "aggregate": {"prob": {"srcc": {"mean": 0.6512, "std": 0.1}}}}))
    folders, worth = default_model()
    assert [str(f) for f in folders] == ["results/models/cv/all"]
    assert "demo:test: prob SRCC 0.651 ± 0.100 (n=50)" in worth and "trained on every fold" in worth
    # an ensemble scores with every member; a member not trained yet is named with its command
    raw["experiments"]["ens"] = {"train": ["demo:train"], "test": ["demo:test"], "ensemble": 3}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    for folder in ("results/models/ens", "results/models/ens.member2"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "lmmvqa.json").write_text("{}")
    with pytest.raises(UserError, match=r"no trained model in results/models/ens.member1 .*`snakemake "
                                        r"results/models/ens.member1 --cores 2`"):
        default_model(experiment="ens")
    (tmp_path / "results/models/ens.member1").mkdir()
    (tmp_path / "results/models/ens.member1/lmmvqa.json").write_text("{}")
    folders, worth = default_model(experiment="ens")
    assert [str(f) for f in folders] == ["results/models/ens", "results/models/ens.member1", "results/models/ens.member2"]
    assert "an ensemble of 3 models, scores averaged" in worth


def test_the_manifest_options_come_from_the_dataset_as_written():
    """The manifest rule's options (rerun triggers and command line) read the dataset's typed settings:
    the MOS scale stays the name the config gives ("1-5"), the split's grouping column its flag."""
    s = _plan(datasets={"d": {"format": "generic", "labels": "l.csv", "mos_scale": "1-5",
                              "split": {"group_by": "source"}},
                        "syn": {"format": "synth", "references": "refs", "split": {"scheme": "official"}}})
    assert workflow.mos_scale_option(s.datasets["d"]) == "--mos-scale 1-5"
    assert workflow.group_by_option(s.datasets["d"]) == "--group-by source"
    assert workflow.mos_scale_option(s.datasets["syn"]) == workflow.group_by_option(s.datasets["syn"]) == ""
    assert s.datasets["syn"].label_format == "generic" and s.datasets["d"].label_format == "generic"
    assert workflow.videos_state(s.datasets["syn"]) == ""  # a synth dataset's videos are a rule's output
    assert workflow.synth_datasets(s.datasets) == ["syn"] and workflow.generated_datasets(s.datasets) == []


def test_rule_inputs_and_resources_from_the_plan():
    """What the input functions of common.smk ask pipeline/workflow.py: a training job's inputs and the
    model it continues from, an aggregate's per-fold files, the families' threads and resources."""
    s = _plan(experiments={
        "cv": {"train": ["demo:train"], "test": ["demo:test"], "folds": "all", "stage1": {"max_steps": 1},
               "exclude_shared": "source"},
        "ens": {"train": ["demo:train"], "test": ["lsvq:test"], "ensemble": 2}},
        models={"preset": "tiny"}, device="cuda", training={"gpus": 2}, features={"decode_workers": 3})
    inputs = workflow.training_inputs(s, "cv", lambda d: [f"store-of-{d}"])
    assert inputs == {"prompts": [str(paths.prompts_dir("demo"))], "stores": ["store-of-demo"],
                      "tokenizer": str(paths.tokenizer_dir()), "manifests": [str(paths.manifest("demo"))]}
    fold1 = {"experiment": "cv", "fold": "1"}

    class Wildcards(dict):
        __getattr__ = dict.__getitem__

    assert workflow.run_init(s)(Wildcards(fold1)) == "results/models/cv.stage1/fold1"
    assert workflow.run_init(s, fold=paths.FULL_MODEL)(Wildcards(experiment="cv")) == "results/models/cv.stage1/all"
    assert workflow.run_init(s, stage=1)(Wildcards(fold1)) == []
    assert workflow.fold_option(Wildcards(fold1)) == "--fold 1" and workflow.member_option(Wildcards(fold1)) == ""
    assert workflow.ensemble_model_dirs(s.experiments["ens"], None) == ["results/models/ens",
                                                                       "results/models/ens.member1"]
    k = s.datasets["demo"].split.k
    assert workflow.fold_metrics(s.experiments["cv"], "demo:test")["metrics"] == [
        str(paths.metrics("cv", "demo:test", f)) for f in range(k)]
    assert workflow.family_threads(s, "extract") == 3 and workflow.family_threads(s, "train") == 8
    train = workflow.family_resources(s, "train_fold")
    assert (train["gpu"], train["runtime"], train["mem_mb"](None, 8)) == (2, 1440, 64000)
    assert "gpu" not in workflow.family_resources(s, "manifest") and workflow.adapter_inputs(s) == []


def test_an_experiment_name_holding_another_configs_results_is_refused(tmp_path, monkeypatch):
    """The record beside an experiment's results names its config file: another file naming the same
    experiment stops (both named) once results exist; the same file, edited, goes on; a record without
    results (a dry run) is taken over."""
    monkeypatch.chdir(tmp_path)
    experiments = _plan().experiments
    (tmp_path / "config").mkdir()
    assert workflow.config_sources([tmp_path / "config/a.yaml"]) == ["config/a.yaml"]
    assert workflow.config_sources(["/elsewhere/b.yaml"]) == ["/elsewhere/b.yaml"]
    workflow.claim_experiments(experiments, ["config/a.yaml"])
    workflow.claim_experiments(experiments, ["config/b.yaml"])  # no results yet: b takes the name over
    assert json.loads(paths.experiment_source("e").read_text())["config_files"] == ["config/b.yaml"]
    paths.model_dir("e").mkdir(parents=True)
    with pytest.raises(UserError, match=r"experiment 'e' already holds the results of config config/b.yaml "
                                        r"\(results/models/e;.*this run's config config/a.yaml names"):
        workflow.claim_experiments(experiments, ["config/a.yaml"])
    workflow.claim_experiments(_plan(evaluation={"bootstrap": 7}).experiments, ["config/b.yaml"])  # an edit of b
    paths.experiment_source("e").unlink()  # what the message offers: a (now) takes b's results over
    workflow.claim_experiments(experiments, ["config/a.yaml"])
    assert json.loads(paths.experiment_source("e").read_text())["config_files"] == ["config/a.yaml"]


def test_a_folder_of_unrated_videos_is_tested_not_trained_on():
    """A `folder` dataset (unrated videos) may be tested on (its videos scored) but not trained on; listing
    it retrains nothing (not in the training jobs' settings) and the tokenizer does not read it."""
    from pipeline.prompts.selectors import prompt_parts, unseen_tests

    raw = {"datasets": {"demo": {"format": "generic", "labels": "l.csv", "videos": "v"},
                        "new": {"format": "folder", "labels": "clips"}},
           "experiments": {"e": {"train": ["demo:train"], "test": ["demo:test"]}}}
    before_plan = workflow.resolve_plan(workflow.load(json.loads(json.dumps(raw))))
    before = workflow.training_experiment(before_plan.experiments["e"], before_plan.datasets)
    raw["experiments"]["e"]["test"].append("new:all")
    s = workflow.resolve_plan(workflow.load(json.loads(json.dumps(raw))))
    assert s.datasets["new"].videos == "clips"  # a folder dataset's videos are its `labels` folder
    assert workflow.training_experiment(s.experiments["e"], s.datasets) == before
    assert workflow.rated_datasets(s.datasets) == ["demo"]
    assert workflow.experiment_tests(s.experiments) == [("e", "demo:test"), ("e", "new:all")]
    assert prompt_parts(s.datasets, "new:all", 0) == ["all"]
    assert unseen_tests(s.experiments["e"], s.datasets) == ["demo:test"]
    with pytest.raises(UserError, match="'new' is a folder of unrated videos"):
        prompt_parts(s.datasets, "new:test", 0)
    s.check_experiments()
    raw["experiments"]["e"]["train"].append("new:all")
    with pytest.raises(UserError, match=r"experiments\.e\.train: 'new:all' is a folder of unrated videos"):
        workflow.resolve_plan(workflow.load(raw)).check_experiments()


def test_only_inputs_no_rule_writes_are_checked_at_parse_time(tmp_path, monkeypatch):
    """The dataset inputs checked before any job are those the workflow only reads: not a generated
    dataset's files, not a synth dataset's outputs or rendered references, nor a folder inside them."""
    monkeypatch.chdir(tmp_path)
    cfg = workflow.load({"datasets": {
        "gen": {"format": "generic", "labels": "resources/demo/labels.csv", "videos": "resources/demo/videos",
                "generate": {"n_videos": 2}},
        "new": {"format": "folder", "labels": "resources/demo/videos/more"},
        "syn": {"format": "synth", "references": "refs", "reference_labels": "refs.csv"},
        "syn2": {"format": "synth", "references": "resources/syn2/videos", "generate": {"n_videos": 2},
                 "reference_labels": "resources/syn2/labels.csv"},
        "mine": {"format": "lsvq", "labels": "a.csv", "extra_labels": ["../shared/b.csv"], "videos": "v"},
    }})
    datasets = workflow.resolve_plan(cfg).datasets
    assert workflow.read_inputs(datasets) == [("references", "refs", "syn"), ("reference_labels", "refs.csv", "syn"),
                                         ("labels", "a.csv", "mine"), ("extra_labels", "../shared/b.csv", "mine"),
                                         ("videos", "v", "mine")]
    with pytest.raises(UserError, match=r"^dataset 'syn': references not found: refs$"):
        workflow.check_inputs(datasets)
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs.csv").write_text("name\n")
    (tmp_path / "a.csv").write_text("name,mos\n")
    with pytest.raises(UserError, match=r"^dataset 'mine': extra_labels not found: \.\./shared/b\.csv; \.\./shared is "
                                        r"the development data folder kept beside the repository, absent in a user's clone"):
        workflow.check_inputs(datasets)


def _reads_dev_data(cfg: dict) -> bool:
    return any(str(v).startswith("../shared/") for ds in cfg["datasets"].values() for v in ds.values())


DEV_CONFIGS = sorted(p.name for p in (REPO / "config").glob("*.yaml") if _reads_dev_data(yaml.safe_load(p.read_text())))


def test_the_development_configs_are_the_ones_docs_list():
    """docs/development-data.md lists every config of config/ that reads ../shared, and no other."""
    import re

    listed = set(re.findall(r"^\| \[`config/([\w-]+\.yaml)`\]", (REPO / "docs/development-data.md").read_text(), re.M))
    assert DEV_CONFIGS and sorted(listed) == DEV_CONFIGS


@pytest.mark.parametrize("config", DEV_CONFIGS)
def test_configs_reading_the_development_data_say_so_and_stop_with_one_line_without_it(config, tmp_path, monkeypatch):
    """A config of config/ that reads ../shared says so in its header comment, and in a folder with no
    ../shared beside it (a user's clone) stops before any job naming the missing path and what
    ../shared is; nothing else of the config is in the way (it validates)."""
    text = (REPO / "config" / config).read_text()
    header = " ".join(line.lstrip("# ") for line in text.split("\ndatasets:")[0].splitlines())
    assert "This config READS ../shared/datasets/" in header and "absent in a user's clone" in header, header
    assert "docs/development-data.md" in header
    work = tmp_path / "clone"
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(UserError, match=r"^dataset '[\w-]+': \w+ not found: \.\./shared/datasets/\S+; \.\./shared is "
                                        r"the development data folder kept beside the repository, absent in a "
                                        r"user's clone: point the dataset at files of your own, see "
                                        r"docs/development-data\.md$"):
        workflow.check_inputs(workflow.resolve_plan(workflow.load(yaml.safe_load(text))).datasets)
