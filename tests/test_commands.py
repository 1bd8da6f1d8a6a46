"""Every `lmmvqa` command runs by hand with only its inputs and `--out`: the side outputs a rule
declares (`--missing`, `--failures`, `--metrics`, `--predictions`, `--plots`) default to the paths
beside the main output that the rules use (pipeline/core/paths.py)."""
from __future__ import annotations

import pandas as pd
import pytest

from pipeline.cli import COMMANDS, build_parser
from pipeline.cli import main as cli_main
from pipeline.core import paths

# the side outputs of each command, and where they go by default, from the main output's path
SIDE_OUTPUTS = {
    "manifest": {"--missing": paths.missing_table},
    "probe": {"--failures": paths.failures_table},
    "evaluate": {"--metrics": paths.metrics_beside},
    "aggregate": {"--predictions": paths.predictions_beside},
    "report": {"--plots": paths.plots_beside},
    "synth-plan": {"--failures": paths.failures_table},
    "synth-labels": {"--failures": paths.failures_table, "--plan-failures": paths.failures_table},
}
# what a command may require: what it reads, what it is about, and its main output
INPUTS = {"--config", "--format", "--labels", "--manifest", "--videos", "--dataset", "--test", "--shard", "--experiment",
          "--prompts", "--model", "--out", "--out-dir", "videos", "argv", "--plan", "--reference", "--segments"}


def _subparsers() -> dict:
    parser = build_parser()
    return next(a for a in parser._actions if a.dest == "command").choices


def test_commands_require_only_inputs_and_the_main_output():
    required = {name: [(a.option_strings or [a.dest])[0] for a in sub._actions if a.required]
                for name, sub in _subparsers().items()}
    assert set(required) == set(COMMANDS)
    assert {name: [r for r in req if r not in INPUTS] for name, req in required.items()} == {n: [] for n in COMMANDS}


def test_side_outputs_are_optional_and_sit_beside_the_main_output():
    subs = _subparsers()
    for name, sides in SIDE_OUTPUTS.items():
        actions = {a.option_strings[0]: a for a in subs[name]._actions if a.option_strings}
        for flag in sides:
            assert not actions[flag].required and actions[flag].default is None, (name, flag)
    # the defaults are the rules' paths
    assert paths.missing_table(paths.manifest("d")) == paths.missing("d")
    assert paths.failures_table(paths.probe("d", 3)) == paths.probe_failures("d", 3)
    assert paths.metrics_beside(paths.predictions("e", "d:test", 1)) == paths.metrics("e", "d:test", 1)
    assert paths.predictions_beside(paths.metrics("e", "d:test")) == paths.predictions("e", "d:test")
    assert paths.plots_beside(paths.report()) == paths.report_plots()
    assert paths.failures_table(paths.synth_plan("d")) == paths.synth_plan_failures("d")
    assert paths.failures_table(paths.synth_labels("d")) == paths.synth_failures("d")


def test_manifest_runs_standalone(tmp_path, capsys):
    """`lmmvqa manifest --format konvid --labels K.csv --out m.csv`, as the README shows it."""
    labels = tmp_path / "K.csv"
    labels.write_text("flickr_id,mos\n101,3.2\n102,4.1\n103,2.0\n104,3.9\n105,1.5\n")
    assert cli_main(["manifest", "--format", "konvid", "--labels", str(labels), "--out", str(tmp_path / "m.csv")]) == 0
    manifest = pd.read_csv(tmp_path / "m.csv", dtype={"id": str})
    assert manifest["id"].tolist() == ["101", "102", "103", "104", "105"]
    assert manifest["mos"].tolist() == pytest.approx([64.0, 82.0, 40.0, 78.0, 30.0])
    missing = pd.read_csv(tmp_path / "m.missing.csv")
    assert list(missing.columns) == ["id", "path", "row", "reason"] and len(missing) == 0
    assert "m.missing.csv" in capsys.readouterr().out


def test_probe_runs_standalone(tmp_path, make_video):
    make_video("videos/a.mp4", n_frames=25, fps=25)
    (tmp_path / "videos/b.mp4").write_text("not a video")
    pd.DataFrame({"id": ["a", "b"], "path": ["a.mp4", "b.mp4"], "shard": [0, 0]}).to_csv(tmp_path / "m.csv", index=False)
    out = tmp_path / "probe" / "p.csv"
    assert cli_main(["probe", "--manifest", str(tmp_path / "m.csv"), "--videos", str(tmp_path / "videos"),
                     "--out", str(out)]) == 0
    assert pd.read_csv(out)["id"].tolist() == ["a"]
    assert pd.read_csv(tmp_path / "probe" / "p.failures.csv")["id"].tolist() == ["b"]


@pytest.mark.parametrize("command, function, side", [
    ("evaluate", "pipeline.evaluation.evaluate.evaluate", "metrics.json"),
    ("aggregate", "pipeline.evaluation.aggregate.aggregate", "predictions.csv"),
])
def test_evaluate_and_aggregate_write_their_side_output_beside_out(tmp_path, monkeypatch, command, function, side):
    """The command hands its stage the side output beside `--out` when it is not given."""
    import importlib

    module, name = function.rsplit(".", 1)
    seen = {}

    def fake(*args, **kw):  # evaluate(settings, experiment, selector, out, metrics), aggregate(exp, selector, out, preds)
        seen.update(out=args[-2], second=args[-1])
        raise SystemExit(0)

    class Resolved:  # what `resolve.load` gives, as far as the commands read it
        device = "cpu"

        def experiment(self, name):
            return name

    monkeypatch.setattr(importlib.import_module(module), name, fake)
    monkeypatch.setattr("pipeline.core.resolve.load", lambda path: Resolved())
    out = tmp_path / "eval" / ("predictions.csv" if command == "evaluate" else "metrics.json")
    with pytest.raises(SystemExit):
        cli_main([command, "--config", "c.yaml", "--experiment", "e", "--test", "d:all", "--out", str(out)])
    assert str(seen["out"]) == str(out) and str(seen["second"]) == str(tmp_path / "eval" / side)
