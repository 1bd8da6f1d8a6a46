"""Metrics against hand-computed cases: ties, the logistic fit on a known curve, RMSE, bootstrap CIs,
invalid answers counted, degenerate cases as null + note (never NaN)."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from pipeline.core.metrics import (
    compute_metrics,
    experiment_table,
    fit_logistic,
    level_metrics,
    logistic,
    score_metrics,
    write_table,
)


def predictions(mos, score, prob=None, level_true=None, level=None, invalid=None):
    n = len(mos)
    invalid = invalid if invalid is not None else [False] * n
    return pd.DataFrame({
        "id": [f"v{i}" for i in range(n)],
        "mos": mos,
        "level_true": level_true or ["fair"] * n,
        "text": [f"{s}" for s in score],
        "score": [None if bad else s for s, bad in zip(score, invalid)],
        "invalid": invalid,
        "prob_score": prob if prob is not None else score,
        "level": level or ["fair"] * n,
        "p_good": 0.2, "p_fair": 0.6, "p_poor": 0.2,
    })


def test_rank_correlations_with_ties_by_hand():
    # x ranks 1, 2.5, 2.5, 4 against 1..4: Spearman = 4.5 / sqrt(4.5 * 5)
    # Kendall tau-b: 5 concordant, 0 discordant, one pair tied in x: 5 / sqrt(6 * 5)
    m = score_metrics([1, 2, 2, 3], [1, 2, 3, 4], bootstrap=0)
    assert m["n"] == 4
    assert m["srcc"] == pytest.approx(4.5 / math.sqrt(22.5))
    assert m["krcc"] == pytest.approx(5 / math.sqrt(30))
    # Pearson by hand: x - mean = -1, 0, 0, 1; y - mean = -1.5, -.5, .5, 1.5
    assert m["plcc_raw"] == pytest.approx(3 / math.sqrt(2 * 5))
    # 4 points: the 4-parameter fit would interpolate -> not defined, with a note
    assert m["plcc"] is None and m["rmse"] is None
    assert "logistic fit needs at least 5" in m["note"]
    assert m["srcc_ci"] is None  # bootstrap = 0


def test_logistic_recovered_from_known_curve():
    x = np.linspace(0, 100, 60)
    mos = logistic(x, 90.0, 10.0, 55.0, 9.0)
    params = fit_logistic(x, mos)
    assert np.allclose(logistic(x, *params), mos, atol=1e-3)
    m = score_metrics(x, mos, bootstrap=0)
    assert m["plcc"] == pytest.approx(1.0, abs=1e-6)
    assert m["rmse"] == pytest.approx(0.0, abs=1e-3)
    assert m["srcc"] == pytest.approx(1.0) and m["krcc"] == pytest.approx(1.0)
    assert m["plcc_raw"] < 0.99  # the curve is not a line: PLCC without the fit is lower


def test_logistic_fit_on_anticorrelated_predictions():
    x = np.linspace(0, 1, 40)
    mos = logistic(x, 10.0, 90.0, 0.5, 0.1)  # decreasing
    m = score_metrics(x, mos, bootstrap=0)
    assert m["srcc"] == pytest.approx(-1.0)
    assert m["plcc"] == pytest.approx(1.0, abs=1e-6)  # the monotonic mapping makes it fit exactly


def test_rmse_by_hand():
    # MOS = a straight line of the predictions (inside the logistic's near-linear middle) +/- 2
    rng = np.random.default_rng(1)
    x = np.sort(rng.uniform(40, 60, 200))
    mos = 2.0 * x - 50 + np.where(np.arange(200) % 2, 2.0, -2.0)
    m = score_metrics(x, mos, bootstrap=0)
    params = fit_logistic(x, mos)
    by_hand = math.sqrt(sum((f - y) ** 2 for f, y in zip(logistic(x, *params), mos)) / len(x))
    assert m["rmse"] == pytest.approx(by_hand)
    assert m["rmse"] == pytest.approx(2.0, rel=0.05)


def test_bootstrap_ci_contains_point_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    mos = rng.uniform(0, 100, 40)
    pred = mos + rng.normal(0, 15, 40)
    a = score_metrics(pred, mos, bootstrap=100, seed=3)
    b = score_metrics(pred, mos, bootstrap=100, seed=3)
    assert a == b
    for key, ci in (("srcc", a["srcc_ci"]), ("plcc", a["plcc_ci"])):
        assert ci[0] < a[key] < ci[1], key
        assert -1 <= ci[0] < ci[1] <= 1


@pytest.mark.parametrize(
    "pred, mos, why",
    [
        ([50, 60], [40, 70], "fewer than 3"),
        ([], [], "fewer than 3"),
        ([50, 50, 50, 50, 50, 50], [10, 20, 30, 40, 50, 60], "constant predictions"),
        ([10, 20, 30, 40, 50, 60], [50] * 6, "constant MOS"),
    ],
)
def test_degenerate_cases_are_null_with_a_note(pred, mos, why):
    m = score_metrics(pred, mos, bootstrap=50)
    for key in ("srcc", "krcc", "plcc", "plcc_raw", "rmse", "srcc_ci", "plcc_ci"):
        assert m[key] is None, key
    assert m["note"].startswith("not defined:") and why in m["note"]
    json.dumps(m, allow_nan=False)


def test_invalid_answers_counted_and_left_out():
    rng = np.random.default_rng(0)
    mos = list(rng.uniform(0, 100, 20))
    score = [v + 1 for v in mos]
    invalid = [i < 3 for i in range(20)]
    m = compute_metrics(predictions(mos, score, invalid=invalid), bootstrap=0, experiment="e", dataset="d")
    assert m["n"] == 20 and m["invalid"] == 3
    assert m["methods"]["text"]["n"] == 17
    assert "3 of 20 answers invalid" in m["methods"]["text"]["note"]
    assert m["methods"]["prob"]["n"] == 20 and m["methods"]["prob"]["note"] is None
    assert m["methods"]["text"]["srcc"] == pytest.approx(1.0)
    json.dumps(m, allow_nan=False)


def test_all_invalid_gives_nulls_not_a_crash():
    mos = [10.0, 20, 30, 40, 50, 60]
    m = compute_metrics(predictions(mos, [0.0] * 6, invalid=[True] * 6), bootstrap=20)
    text = m["methods"]["text"]
    assert m["invalid"] == 6 and text["n"] == 0 and text["srcc"] is None
    assert text["note"].startswith("not defined:")
    assert m["methods"]["prob"]["note"].startswith("not defined: constant predictions")
    json.dumps(m, allow_nan=False)


def test_unparsed_score_counts_as_invalid_even_without_the_flag():
    mos = [10.0, 20, 30, 40, 50, 60]
    df = predictions(mos, mos)
    df.loc[0, "score"] = None
    assert compute_metrics(df, bootstrap=0)["invalid"] == 1


def test_level_accuracy_and_confusion_by_hand():
    true = ["poor", "poor", "fair", "fair", "good", "good"]
    pred = ["poor", "fair", "fair", None, "good", "poor"]
    m = level_metrics(true, pred)
    assert m["labels"] == ["poor", "fair", "good"]
    # rows = true, columns = predicted
    assert m["confusion"] == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    assert m["accuracy"] == pytest.approx(3 / 6)  # the invalid answer counts as wrong
    assert m["invalid"] == 1


def test_metrics_json_shape():
    rng = np.random.default_rng(2)
    mos = list(rng.uniform(0, 100, 12))
    m = compute_metrics(predictions(mos, [v + rng.normal() for v in mos]), bootstrap=30, experiment="e", dataset="d")
    assert set(m) >= {"experiment", "dataset", "n", "invalid", "methods", "level"}
    for method in ("text", "prob"):
        assert set(m["methods"][method]) == {"n", "srcc", "krcc", "plcc", "plcc_raw", "rmse", "srcc_ci", "plcc_ci", "note"}
    assert set(m["level"]) >= {"accuracy", "labels", "confusion"}
    json.dumps(m, allow_nan=False)


def test_experiment_table_csv_and_markdown(tmp_path):
    rng = np.random.default_rng(3)
    metrics = []
    for d in ("a", "b"):
        mos = list(rng.uniform(0, 100, 15))
        metrics.append(compute_metrics(predictions(mos, [v + rng.normal(0, 5) for v in mos]), 0, 0, "e", d))
    metrics.append(compute_metrics(predictions([1.0, 2.0], [1.0, 2.0]), 0, 0, "e", "tiny"))
    df = experiment_table(metrics)
    assert list(df["dataset"]) == ["a", "b", "tiny"]
    assert df.loc[0, "text_srcc"] == pytest.approx(metrics[0]["methods"]["text"]["srcc"])
    assert "invalid" in df.columns and pd.isna(df.loc[2, "text_srcc"])
    csv, md = write_table(df, tmp_path / "table.csv")
    back = pd.read_csv(csv)
    assert back.loc[1, "prob_plcc"] == pytest.approx(metrics[1]["methods"]["prob"]["plcc"], rel=1e-5)
    text = open(md).read()
    assert "| e " in text and "n/a" in text and "invalid" in text


def test_invalid_flags_read_the_column_as_written_or_read_back():
    from pipeline.core.metrics import invalid_flags

    df = pd.DataFrame({"invalid": [True, False, "True", "false", "1", "0", " yes ", np.nan, "TRUE"]})
    assert invalid_flags(df).tolist() == [True, False, True, False, True, False, True, False, True]
    assert invalid_flags(df).dtype == bool
    assert invalid_flags(pd.DataFrame({"score": [1.0, 2.0]})).tolist() == [False, False]
