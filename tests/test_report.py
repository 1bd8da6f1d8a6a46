"""The HTML report: written from synthetic predictions / metrics / training logs, self-contained,
its tables equal to the metrics JSON, plots also written as PNG files."""
import base64
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO

from pipeline.cli import main as cli_main
from pipeline.core import paths
from pipeline.core.metrics import compute_metrics


SELECTOR = {"demo": "demo:test", "other": "other:all"}


def make_run(root, experiments=("demo",), datasets=("demo", "other"), invalid=2, seed=0):
    """Synthetic results of a run under `root` (the working directory); returns the config path."""
    rng = np.random.default_rng(seed)
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["datasets"]["other"] = {"format": "generic", "labels": "other.csv"}
    cfg["experiments"] = {e: {"train": ["demo:train"], "test": [SELECTOR[d] for d in datasets]} for e in experiments}
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
            pred_path = root / paths.predictions(e, SELECTOR[d])
            pred_path.parent.mkdir(parents=True, exist_ok=True)
            df.to_csv(pred_path, index=False)
            metrics = compute_metrics(df, bootstrap=20, seed=0, experiment=e, dataset=d)
            metrics["test"] = SELECTOR[d]
            (root / paths.metrics(e, SELECTOR[d])).write_text(json.dumps(metrics, allow_nan=False))
        model = root / paths.model_dir(e)
        model.mkdir(parents=True, exist_ok=True)
        steps = np.arange(1, 101)
        pd.DataFrame({"step": steps, "loss": 3 * np.exp(-steps / 30) + 0.1, "lr": 1e-3, "samples_per_s": 50.0}).to_csv(
            model / "train_log.csv", index=False)
        (model / "lmmvqa.json").write_text(json.dumps({"llm": {"source": "meta-llama/Meta-Llama-3-8B-Instruct"},
                                                        "vision": {"source": None}, "pooling": "mean"}))
    return cfg_path


class Cells(HTMLParser):
    """data-key / data-value / text of every cell of the metric tables, per experiment and test selector."""

    def __init__(self):
        super().__init__()
        self.cells, self.stack, self.exp, self.test, self.external = [], [], None, None, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "data-experiment" in a:
            self.exp = a["data-experiment"]
        if tag == "tr" and "data-test" in a:
            self.test = a["data-test"]
        if "data-key" in a and tag in ("td", "span"):
            self.cells.append({"exp": self.exp, "test": self.test, "key": a["data-key"], "value": a["data-value"], "text": ""})
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
        metrics = json.loads((tmp_path / paths.metrics(cell["exp"], cell["test"])).read_text())
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
    # per (experiment, test selector): n, invalid, 2 x (6 cells + 2 CIs), level accuracy, level invalid
    assert checked == 2 * 2 * (2 + 2 * 8 + 2)
    invalid_cells = [c for c in parser.cells if c["key"] == "invalid"]
    assert {c["value"] for c in invalid_cells} == {"2"}
    # invalid answers are listed, escaped
    assert "sixty &lt;b&gt;bold&lt;/b&gt;" in html and "<b>bold</b>" not in html
    # provenance
    assert "meta-llama/Meta-Llama-3-8B-Instruct" in html and "code versions" in html
    # plots also as files (Snakemake report() outputs); tables as CSV + Markdown
    plots = sorted(p.name for p in (out.parent / "plots").iterdir())
    assert "demo--other--all--scatter.png" in plots and "cross--demo--test--confusion.png" in plots
    assert "demo--loss.png" in plots
    assert all((out.parent / "plots" / p).read_bytes()[:4] == b"\x89PNG" for p in plots)
    table = pd.read_csv(tmp_path / paths.experiment_table("demo"))
    m = json.loads((tmp_path / paths.metrics("demo", "other:all")).read_text())
    row = table[table["test"] == "other:all"].iloc[0]
    assert row["dataset"] == "other"
    assert row["text_srcc"] == pytest.approx(m["methods"]["text"]["srcc"], rel=1e-5)
    assert row["invalid"] == 2
    assert (tmp_path / paths.experiment_table("demo")).with_suffix(".md").exists()


def test_report_with_missing_inputs_and_undefined_metrics(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg_path = make_run(tmp_path, datasets=("demo", "other"))
    (tmp_path / paths.metrics("demo", "other:all")).unlink()
    (tmp_path / paths.model_dir("demo") / "train_log.csv").unlink()
    # a dataset with two videos: every metric undefined
    df = pd.read_csv(tmp_path / paths.predictions("demo", "demo:test")).head(2)
    (tmp_path / paths.metrics("demo", "demo:test")).write_text(json.dumps(compute_metrics(df, 10, 0, "demo", "demo")))
    out = tmp_path / "report.html"
    assert cli_main(["report", "--config", str(cfg_path), "--out", str(out)]) == 0
    html = out.read_text()
    assert "missing metrics" in html and "no training log" in html
    assert "not defined: fewer than 3 valid predictions" in html
    text = re.sub(r'src="data:image/png;base64,[^"]*"', "", html)
    assert not re.search(r"\bnan\b", text, re.IGNORECASE)


def test_report_writes_its_plots_where_it_is_told(tmp_path, monkeypatch):
    """`--plots` (the report rule's declared plots folder) receives the PNG files; nothing is written
    into the default folder beside the page then; the page embeds the same images either way."""
    monkeypatch.chdir(tmp_path)
    cfg_path = make_run(tmp_path, datasets=("demo",))
    out, plots = tmp_path / "page" / "index.html", tmp_path / "elsewhere" / "plots"
    assert cli_main(["report", "--config", str(cfg_path), "--out", str(out), "--plots", str(plots)]) == 0
    assert sorted(p.name for p in plots.iterdir()) == ["demo--demo--test--confusion.png",
                                                       "demo--demo--test--scatter.png", "demo--loss.png"]
    assert not (out.parent / "plots").exists()
    embedded = re.findall(r'src="data:image/png;base64,([^"]*)"', out.read_text())
    assert sorted(embedded) == sorted(base64.b64encode(p.read_bytes()).decode() for p in plots.iterdir())


def test_report_unknown_experiment_is_a_user_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg_path = make_run(tmp_path, datasets=("demo",))
    assert cli_main(["report", "--config", str(cfg_path), "--experiment", "nope", "--out", "r.html"]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err


# ---- every fold of an experiment, and the cross-experiment summary ----------------------------------
class Attrs(HTMLParser):
    """Every element carrying one of the given data attributes: its attributes, its text and the
    fold-table / summary-cell it sits in."""

    def __init__(self, names):
        super().__init__()
        self.names, self.found, self.stack, self.ctx = names, [], [], {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("data-fold-experiment", "data-fold-test", "data-fold", "data-summary-exp", "data-summary-test"):
            if key in a:
                self.ctx[key] = a[key]
        if any(n in a for n in self.names):
            self.found.append({**self.ctx, **a, "text": ""})
            self.stack.append((tag, self.found[-1]))

    def handle_endtag(self, tag):
        if self.stack and self.stack[-1][0] == tag:
            self.stack.pop()

    def handle_data(self, data):
        for _, item in self.stack:
            item["text"] += data


def make_fold_run(root, k=5):
    """`single` (one held-out fold) and `cv` (folds: all) on the demo dataset, with per-fold results
    aggregated as `lmmvqa aggregate` does."""
    from pipeline.core.metrics import aggregate_folds

    cfg_path = make_run(root, experiments=("single",), datasets=("demo",))
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["experiments"]["cv"] = {"train": ["demo:train"], "test": ["demo:test"], "folds": "all"}
    cfg_path.write_text(yaml.safe_dump(cfg))
    rng = np.random.default_rng(1)
    per_fold = []
    for f in range(k):
        n = 12
        mos = rng.uniform(5, 95, n)
        lt = np.where(mos <= 35, "poor", np.where(mos <= 65, "fair", "good"))
        df = pd.DataFrame({"id": [f"v{f}-{i}" for i in range(n)], "mos": mos, "level_true": lt,
                           "text": "", "score": mos + rng.normal(0, 4 + 6 * f, n), "invalid": False,
                           "prob_score": mos + rng.normal(0, 3 + 5 * f, n), "level": lt,
                           "p_good": 0.3, "p_fair": 0.4, "p_poor": 0.3})
        df.loc[0, ["score", "invalid"]] = [np.nan, True]
        m = compute_metrics(df, bootstrap=0, seed=0, experiment="cv", dataset="demo")
        m["fold"] = f
        per_fold.append(m)
        model = root / paths.model_dir("cv", f)
        model.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"step": np.arange(1, 31), "loss": 2 * np.exp(-np.arange(30) / (10 + f)) + 0.1}).to_csv(
            model / "train_log.csv", index=False)
        df.insert(1, "fold", f)
        per_fold[-1]["_df"] = df
    pooled = pd.concat([m.pop("_df") for m in per_fold], ignore_index=True)
    (root / paths.predictions("cv", "demo:test")).parent.mkdir(parents=True, exist_ok=True)
    pooled.to_csv(root / paths.predictions("cv", "demo:test"), index=False)
    agg = aggregate_folds(per_fold, "cv", "demo")
    agg["test"] = "demo:test"
    (root / paths.metrics("cv", "demo:test")).write_text(json.dumps(agg, allow_nan=False))
    return cfg_path


def test_report_fold_table_and_summary(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg_path = make_fold_run(tmp_path)
    out = tmp_path / "results" / "report" / "index.html"
    assert cli_main(["report", "--config", str(cfg_path), "--out", str(out)]) == 0
    html = out.read_text()
    agg = json.loads((tmp_path / paths.metrics("cv", "demo:test")).read_text())
    single = json.loads((tmp_path / paths.metrics("single", "demo:test")).read_text())

    # the fold table: each fold, then mean / std / median, equal to the aggregate metrics.json
    cells = Attrs(["data-fold-col"])
    cells.feed(html)
    table = [c for c in cells.found if c.get("data-fold-experiment") == "cv"]
    assert [c["data-fold"] for c in table if c["data-fold-col"] == "prob.srcc"] == ["0", "1", "2", "3", "4", "mean", "std", "median"]
    for c in table:
        col, fold = c["data-fold-col"], c["data-fold"]
        if fold.isdigit():
            fm = agg["fold_metrics"][int(fold)]
            want = fm["methods"][col.split(".")[0]][col.split(".")[1]] if "." in col else (
                fm["level"]["accuracy"] if col == "level" else fm[col])
        else:
            a = agg["aggregate"]
            want = (a[col.split(".")[0]][col.split(".")[1]] if "." in col else
                    a["level_accuracy" if col == "level" else col])[fold]
        assert (c["data-value"] == "" if want is None else float(c["data-value"]) == pytest.approx(want)), (c, want)
    srcc = [f["methods"]["prob"]["srcc"] for f in agg["fold_metrics"]]
    mean_cell = next(c for c in table if c["data-fold"] == "mean" and c["data-fold-col"] == "prob.srcc")
    assert mean_cell["text"] == f"{np.mean(srcc):.3f}"
    std_cell = next(c for c in table if c["data-fold"] == "std" and c["data-fold-col"] == "prob.srcc")
    assert std_cell["text"] == f"{np.std(srcc, ddof=1):.3f}"
    assert not any(c.get("data-fold-experiment") == "single" for c in cells.found)  # single fold: no fold table

    # the main table of the fold experiment: means, with the std over folds beside them
    stds = Attrs(["data-std-key"])
    stds.feed(html)
    prob_std = next(s for s in stds.found if s["data-std-key"] == "prob.srcc")
    assert float(prob_std["data-value"]) == pytest.approx(np.std(srcc, ddof=1))

    # the summary: experiments x test datasets, SRCC / PLCC (mean ± std for folds) and invalid counts
    summ = Attrs(["data-summary-cell"])
    summ.feed(html)
    got = {(c["data-summary-exp"], c["data-summary-test"], c["data-summary-cell"]): c for c in summ.found}
    assert {k[:2] for k in got} == {("single", "demo:test"), ("cv", "demo:test")}
    c = got[("cv", "demo:test", "prob.srcc")]
    assert float(c["data-value"]) == pytest.approx(np.mean(srcc)) and float(c["data-std"]) == pytest.approx(np.std(srcc, ddof=1))
    assert c["text"] == f"SRCC {np.mean(srcc):.3f} ± {np.std(srcc, ddof=1):.3f}"
    s = got[("single", "demo:test", "text.plcc")]
    assert float(s["data-value"]) == pytest.approx(single["methods"]["text"]["plcc"]) and s["data-std"] == ""
    assert got[("cv", "demo:test", "invalid")]["data-value"] == "5"
    assert got[("single", "demo:test", "invalid")]["data-value"] == "2"
    summary = pd.read_csv(tmp_path / paths.summary_table())
    summary = summary.set_index("experiment")  # rows in the config's order of experiments
    assert summary.index.tolist() == list(yaml.safe_load(cfg_path.read_text())["experiments"])
    assert summary.loc["cv", "prob_srcc"] == pytest.approx(np.mean(srcc), rel=1e-5) and summary.loc["cv", "folds"] == 5
    assert pd.isna(summary.loc["single", "folds"]) and pd.isna(summary.loc["single", "prob_srcc_std"])
    assert "± " in (tmp_path / paths.summary_table()).with_suffix(".md").read_text()

    # the experiment table CSV: each fold + mean / std / median; the loss plot overlays the folds
    table_csv = pd.read_csv(tmp_path / paths.experiment_table("cv"), dtype={"fold": str})
    assert table_csv["fold"].tolist() == ["0", "1", "2", "3", "4", "mean", "std", "median"]
    assert "fold" not in pd.read_csv(tmp_path / paths.experiment_table("single")).columns
    assert (tmp_path / "results/report/plots/cv--loss.png").read_bytes()[:4] == b"\x89PNG"
    assert "fold 4" in html and str(paths.model_dir("cv", 4)) in html


def test_report_page_renders_as_before_from_the_packaged_template():
    """The page template lives in pipeline/data/report.html.j2 (package data). Rendered with a fixed
    context (captured from `make_fold_run`'s report: plots, paths, time and versions replaced by
    constants), it gives exactly the page the template gave when it was a string in report.py."""
    from pipeline.evaluation import report

    data = REPO / "tests" / "data"
    context = json.loads((data / "report_context.json").read_text())
    assert report.TEMPLATE_PATH.is_file() and report.TEMPLATE_PATH.parent.name == "data"
    assert report.render_html(**context) == (data / "report_golden.html").read_text(encoding="utf-8")


def capture_golden(folder) -> tuple[dict, str]:
    """(context, page) of `make_fold_run`'s report with plots, time, paths and versions made constant:
    what tests/data/report_context.json and report_golden.html hold. Regenerate both after an intended
    change of the page: `python tests/test_report.py --regenerate`."""
    import os

    from pipeline.evaluation import report

    captured = {}
    real = report.render_html

    def capture(**context):
        captured.update(json.loads(json.dumps(context, default=list)))
        return real(**context)

    cwd = os.getcwd()
    os.chdir(folder)
    try:
        cfg_path = make_fold_run(folder)
        report.render_html = capture
        assert cli_main(["report", "--config", str(cfg_path), "--out", "results/report/index.html"]) == 0
    finally:
        report.render_html = real
        os.chdir(cwd)
    png = re.compile(r"^[A-Za-z0-9+/=]{64,}$")

    def constant(node):
        if isinstance(node, dict):
            return {k: constant(v) for k, v in node.items()}
        if isinstance(node, list):
            return [constant(v) for v in node]
        return "iVBORw0KGgo=" if isinstance(node, str) and png.match(node) else node

    context = constant(captured)
    context["generated"] = "2025-01-01 00:00 UTC"
    prov = context["provenance"]
    prov.update(git="0123456789ab", config_path="/run/config.yaml",
                code_versions={k: "c0de" for k in prov["code_versions"]})
    context = json.loads(json.dumps(context, sort_keys=True))  # as the test reads it back
    return context, report.render_html(**context)


if __name__ == "__main__" and "--regenerate" in sys.argv:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ctx, page = capture_golden(Path(tmp))
    (REPO / "tests/data/report_context.json").write_text(json.dumps(ctx, indent=1, sort_keys=True) + "\n")
    (REPO / "tests/data/report_golden.html").write_text(page, encoding="utf-8")
    print("tests/data/report_context.json and report_golden.html regenerated")
