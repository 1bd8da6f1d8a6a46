"""The HTML report: written from synthetic predictions / metrics / training logs, self-contained,
its tables equal to the metrics JSON, plots also written as PNG files."""
import json
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline import paths
from pipeline.cli import main as cli_main
from pipeline.metrics import compute_metrics

from conftest import REPO


def make_run(root, experiments=("demo",), datasets=("demo", "other"), invalid=2, seed=0):
    """Synthetic results of a run under `root` (the working directory); returns the config path."""
    rng = np.random.default_rng(seed)
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["datasets"]["other"] = {"format": "generic", "labels": "other.csv"}
    cfg["experiments"] = {e: {"train": ["demo:train"], "test": [f"{d}:test" if d == "demo" else f"{d}:all" for d in datasets]}
                          for e in experiments}
    cfg_path = root / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    for e in experiments:
        for d in datasets:
            n = 30
            mos = rng.uniform(5, 95, n)
            score = np.clip(mos + rng.normal(0, 8, n), 0, 100)
            level_true = np.where(mos <= 35, "poor", np.where(mos <= 65, "fair", "good"))
            level = level_true.copy()
            level[:4] = "fair"
            df = pd.DataFrame({"id": [f"{d}-{i}" for i in range(n)], "mos": mos, "level_true": level_true,
                               "text": [f"{s:.3f}" for s in score], "score": score, "invalid": False,
                               "prob_score": np.clip(mos + rng.normal(0, 6, n), 0, 100), "level": level,
                               "p_good": 0.3, "p_fair": 0.4, "p_poor": 0.3})
            df.loc[: invalid - 1, ["text", "score", "invalid"]] = ["sixty <b>bold</b>", np.nan, True]
            pred_path = root / paths.predictions(e, d)
            pred_path.parent.mkdir(parents=True, exist_ok=True)
            df.to_csv(pred_path, index=False)
            metrics = compute_metrics(df, bootstrap=20, seed=0, experiment=e, dataset=d)
            (root / paths.metrics(e, d)).write_text(json.dumps(metrics, allow_nan=False))
        model = root / paths.model_dir(e)
        model.mkdir(parents=True, exist_ok=True)
        steps = np.arange(1, 101)
        pd.DataFrame({"step": steps, "loss": 3 * np.exp(-steps / 30) + 0.1, "lr": 1e-3, "samples_per_s": 50.0}).to_csv(
            model / "train_log.csv", index=False)
        (model / "lmmvqa.json").write_text(json.dumps({"llm": {"source": "meta-llama/Meta-Llama-3-8B-Instruct"},
                                                        "vision": {"source": None}, "pooling": "mean"}))
    return cfg_path


class Cells(HTMLParser):
    """data-key / data-value / text of every cell of the metric tables, per experiment and dataset."""

    def __init__(self):
        super().__init__()
        self.cells, self.stack, self.exp, self.dataset, self.external = [], [], None, None, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "data-experiment" in a:
            self.exp = a["data-experiment"]
        if tag == "tr" and "data-dataset" in a:
            self.dataset = a["data-dataset"]
        if "data-key" in a and tag in ("td", "span"):
            self.cells.append({"exp": self.exp, "dataset": self.dataset, "key": a["data-key"], "value": a["data-value"], "text": ""})
            self.stack.append(self.cells[-1])
        for attr in ("src", "href"):
            if attr in a and not str(a[attr]).startswith(("data:", "#")):
                self.external.append(a[attr])
        if tag in ("script", "link", "iframe"):
            self.external.append(tag)

    def handle_endtag(self, tag):
        if tag in ("td", "span") and self.stack:
            self.stack.pop()

    def handle_data(self, data):
        if self.stack:
            self.stack[-1]["text"] += data


def lookup(metrics, key):
    node = metrics
    for part in key.split("."):
        node = node["methods"][part] if part in ("text", "prob") and "methods" in node else node[part]
    return node


def test_report_tables_equal_the_metric_json(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg_path = make_run(tmp_path, experiments=("demo", "cross"))
    out = tmp_path / "results" / "report" / "index.html"
    assert cli_main(["report", "--config", str(cfg_path), "--out", str(out)]) == 0
    html = out.read_text()
    parser = Cells()
    parser.feed(html)
    assert parser.external == []  # self-contained
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 2 * (2 * 2 + 1)  # scatter + confusion, loss
    checked = 0
    for cell in parser.cells:
        metrics = json.loads((tmp_path / paths.metrics(cell["exp"], cell["dataset"])).read_text())
        want = lookup(metrics, cell["key"].replace("_ci", "_ci"))
        if cell["key"].endswith("_ci"):
            assert [float(v) for v in cell["value"].split(",")] == want
            assert cell["text"] == f"[{want[0]:.3f}, {want[1]:.3f}]"
        elif want is None:
            assert cell["value"] == "" and cell["text"].strip() == "n/a"
        elif isinstance(want, int):
            assert int(cell["value"]) == want and cell["text"].strip() == str(want)
        else:
            assert float(cell["value"]) == want  # exact: repr round-trips
            digits = 2 if cell["key"].endswith("rmse") else 3
            assert cell["text"].strip() == f"{want:.{digits}f}"
        checked += 1
    # per (experiment, dataset): n, invalid, 2 x (6 cells + 2 CIs), level accuracy, level invalid
    assert checked == 2 * 2 * (2 + 2 * 8 + 2)
    invalid_cells = [c for c in parser.cells if c["key"] == "invalid"]
    assert {c["value"] for c in invalid_cells} == {"2"}
    # invalid answers are listed, escaped
    assert "sixty &lt;b&gt;bold&lt;/b&gt;" in html and "<b>bold</b>" not in html
    # provenance
    assert "meta-llama/Meta-Llama-3-8B-Instruct" in html and "code versions" in html
    # plots also as files (Snakemake report() outputs); tables as CSV + Markdown
    plots = sorted(p.name for p in (out.parent / "plots").iterdir())
    assert "demo--other--scatter.png" in plots and "cross--demo--confusion.png" in plots and "demo--loss.png" in plots
    assert all((out.parent / "plots" / p).read_bytes()[:4] == b"\x89PNG" for p in plots)
    table = pd.read_csv(tmp_path / paths.experiment_table("demo"))
    m = json.loads((tmp_path / paths.metrics("demo", "other")).read_text())
    row = table[table["dataset"] == "other"].iloc[0]
    assert row["text_srcc"] == pytest.approx(m["methods"]["text"]["srcc"], rel=1e-5)
    assert row["invalid"] == 2
    assert (tmp_path / paths.experiment_table("demo")).with_suffix(".md").exists()


def test_report_with_missing_inputs_and_undefined_metrics(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg_path = make_run(tmp_path, datasets=("demo", "other"))
    (tmp_path / paths.metrics("demo", "other")).unlink()
    (tmp_path / paths.model_dir("demo") / "train_log.csv").unlink()
    # a dataset with two videos: every metric undefined
    df = pd.read_csv(tmp_path / paths.predictions("demo", "demo")).head(2)
    (tmp_path / paths.metrics("demo", "demo")).write_text(json.dumps(compute_metrics(df, 10, 0, "demo", "demo")))
    out = tmp_path / "report.html"
    assert cli_main(["report", "--config", str(cfg_path), "--out", str(out)]) == 0
    html = out.read_text()
    assert "missing metrics" in html and "no training log" in html
    assert "not defined: fewer than 3 valid predictions" in html
    text = re.sub(r'src="data:image/png;base64,[^"]*"', "", html)
    assert not re.search(r"\bnan\b", text, re.IGNORECASE)


def test_report_unknown_experiment_is_a_user_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg_path = make_run(tmp_path, datasets=("demo",))
    assert cli_main(["report", "--config", str(cfg_path), "--experiment", "nope", "--out", "r.html"]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err
