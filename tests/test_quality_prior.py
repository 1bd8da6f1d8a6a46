"""The quality prior (pipeline/model/quality_prior.py): the adapter's own score, calibrated on the training
videos' MOS, blended into the model's probability score."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.core import resolve
from pipeline.core.config import validate
from pipeline.core.errors import UserError
from pipeline.core.metrics import aggregate_folds, compute_metrics
from pipeline.evaluation.predict import predict_batch
from pipeline.evaluation.report import metrics_rows
from pipeline.features.encoding import quality_adapter as qa
from pipeline.features.stores.store_reader import collate_videos
from pipeline.model import quality_prior as qp
from pipeline.model.answers import mbr_score
from pipeline.model.lmm import LMMVQA
from pipeline.model.tokenizer import train_tokenizer
from pipeline.prompts.shards import load_templates, question_for
from pipeline.training.train import new_model

BASE, DIM, TOKENS, MOTION = 10, 3, 4, 6


class FakeFeatures:
    """What training and the prior read of a dataset's feature stores: spatial / motion per id and the
    stores' attributes (the adapter record extraction writes)."""

    def __init__(self, arrays: dict, adapted: dict | None):
        self.arrays = arrays
        self.ids = list(arrays)
        self.stores = [type("Store", (), {"attrs": {"vision": {"width": BASE + DIM, "base_width": BASE,
                                                               "adapted": adapted}}})()]

    def spatial(self, vid):
        return self.arrays[vid][0]

    def motion(self, vid):
        return self.arrays[vid][1]


@pytest.fixture(scope="module")
def adapter_file(tmp_path_factory):
    adapter = qa.QualityAdapter(BASE, DIM, 8)
    with torch.no_grad():
        adapter.head.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
        adapter.head.bias.fill_(3.0)
    path = qa.save_adapter(tmp_path_factory.mktemp("enc") / "adapter.safetensors", adapter,
                           {"hash": "aaaaaaaaaa", "base_hash": "bbbbbbbbbb", "objective": "listwise"})
    return {"file": str(path), "hash": "aaaaaaaaaa", "base_hash": "bbbbbbbbbb"}


def videos(n, seed):
    """Videos whose adapter columns (the last DIM) vary per key frame; the head's score of their mean is known."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        k = int(rng.integers(1, 4))
        out[f"v{i}"] = (rng.normal(size=(k, TOKENS, BASE + DIM)).astype(np.float32),
                        rng.normal(size=(2, MOTION)).astype(np.float32))
    return out


def head_score(spatial):
    return float(spatial[..., -DIM:].mean((0, 1)) @ np.array([1.0, -2.0, 0.5]) + 3.0)


def test_prior_is_the_adapter_score_on_the_mos_scale(adapter_file):
    arrays = videos(12, 0)
    feats = FakeFeatures(arrays, adapter_file)
    raw = {v: head_score(s) for v, (s, _) in arrays.items()}
    # MOS exactly linear in the adapter's score: the fitted line maps one onto the other
    samples = [{"dataset": "d", "id": v, "mos": 40 + 5 * r, "type": t} for v, r in raw.items() for t in ("score", "level")]
    prior = qp.fit_prior({"d": feats}, samples, 0.4)
    assert prior["weight"] == 0.4 and prior["adapter"] == "aaaaaaaaaa" and prior["n_videos"] == 12
    assert prior["slope"] == pytest.approx(5.0) and prior["train_srcc"] == pytest.approx(1.0)
    ids = list(arrays)
    batch = collate_videos([arrays[v] for v in ids])  # ragged key frames: padding must not count
    got = qp.prior_scores(prior, batch["spatial"], batch["spatial_mask"])
    assert got == pytest.approx([40 + 5 * raw[v] for v in ids], abs=1e-3)


def test_prior_needs_adapted_features_of_one_adapter(adapter_file):
    arrays = videos(4, 1)
    samples = [{"dataset": d, "id": v, "mos": 50.0} for d in ("a", "b") for v in arrays]
    with pytest.raises(UserError, match="models.vision.adapted.*those of b carry none"):
        qp.fit_prior({"a": FakeFeatures(arrays, adapter_file), "b": FakeFeatures(arrays, None)}, samples, 0.3)
    other = {**adapter_file, "hash": "cccccccccc"}
    with pytest.raises(UserError, match="different quality adapters .*a: aaaaaaaaaa, b: cccccccccc"):
        qp.fit_prior({"a": FakeFeatures(arrays, adapter_file), "b": FakeFeatures(arrays, other)}, samples, 0.3)
    prior = {"adapter": "aaaaaaaaaa", "dim": DIM, "coef": [0.0] * DIM, "bias": 0.0, "weight": 0.3}
    with pytest.raises(UserError, match="model_x: .*adapter aaaaaaaaaa, these features come from no adapter"):
        qp.check_features(prior, FakeFeatures(arrays, None), "model_x")
    qp.check_features(prior, FakeFeatures(arrays, adapter_file), "model_x")  # the same adapter: fine
    qp.check_features(None, FakeFeatures(arrays, None), "model_x")  # no prior: anything goes


def test_training_records_the_prior_and_prediction_blends_it(adapter_file, tmp_path):
    arrays = videos(10, 2)
    feats = {"d": FakeFeatures(arrays, adapter_file)}
    bank = load_templates(None, "integer")
    tok = train_tokenizer([{"question": q, "answer": "50"} for q in bank["score"] + bank["level"]], "integer")
    cfg = validate({"datasets": {"d": {"format": "generic", "labels": "l.csv"}},
                    "models": {"preset": "tiny", "llm": {"config": {"hidden_size": 64, "intermediate_size": 128,
                                                                    "num_hidden_layers": 1, "num_attention_heads": 2,
                                                                    "num_key_value_heads": 2}}},
                    "prompts": {"answer_format": "integer"}, "training": {"quality_prior": 0.25}})
    info = {"vision_tokens": TOKENS, "vision_width": BASE + DIM, "motion_dim": MOTION}
    samples = [{"dataset": "d", "id": v, "mos": 10.0 * i, "type": "score", "question": "q", "answer": str(10 * i)}
               for i, v in enumerate(arrays)]
    s = resolve.of(cfg)
    model = new_model(s.training, s.models["llm"], s.prompts, tok, info, samples, feats).eval()
    prior = model.config["quality_prior"]
    assert prior["weight"] == 0.25 and prior["adapter"] == "aaaaaaaaaa" and prior["n_videos"] == 10
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "lmmvqa.json").read_text())["quality_prior"] == prior
    again = LMMVQA.from_pretrained(tmp_path / "m").eval()
    ids = list(arrays)[:4]
    batch = collate_videos([arrays[v] for v in ids])
    rows = predict_batch(again, batch, ids, bank=bank)
    q = qp.prior_scores(prior, batch["spatial"], batch["spatial_mask"])
    for r, qi in zip(rows, q):
        assert r["quality_score"] == pytest.approx(qi)
        assert r["prob_score"] == pytest.approx(0.75 * r["lmm_prob_score"] + 0.25 * qi)
    # under mbr the text answer is the ensemble's too: (1 - w) x the head's median + w x the adapter's score
    mbr = predict_batch(again, batch, ids, bank=bank, decoding="mbr")
    medians = [mbr_score(row) for row in again.score_logprobs(batch, [question_for(v, "score", 0, bank, 0)[1]
                                                                      for v in ids])]
    for r, qi, med in zip(mbr, q, medians):
        assert r["text"] == again.answer_format.render(0.75 * med + 0.25 * qi)
        assert r["prob_score"] == pytest.approx(0.75 * r["lmm_prob_score"] + 0.25 * qi)
    # the level a user reads is the blended score's level by the training videos' MOS edges (0 ... 90)
    assert prior["level_edges"] == pytest.approx(np.percentile(10.0 * np.arange(10), [33, 66]))
    for r in rows + mbr:
        p33, p66 = prior["level_edges"]
        assert r["level"] == ("poor" if r["prob_score"] <= p33 else "fair" if r["prob_score"] <= p66 else "good")
    for edges, level in (([1e3, 2e3], "poor"), ([-2e3, -1e3], "good")):
        again.config["quality_prior"] = {**prior, "level_edges": edges}
        assert {r["level"] for r in predict_batch(again, batch, ids, bank=bank, decoding="mbr")} == {level}
        assert {r["level"] for r in predict_batch([again, again], batch, ids, bank=bank)} == {level}
    again.config["quality_prior"] = {k: v for k, v in prior.items() if k != "level_edges"}  # an older folder
    head = predict_batch(again, batch, ids, bank=bank, decoding="mbr")
    assert [r["level"] for r in head] == [max(("poor", "fair", "good"), key=lambda lv: r[f"p_{lv}"]) for r in head]
    # without the prior the model's own expected score is the probability score, as before
    again.config.pop("quality_prior")
    assert [r["text"] for r in predict_batch(again, batch, ids, bank=bank, decoding="mbr")] == [
        again.answer_format.render(med) for med in medians]
    plain = predict_batch(again, batch, ids, bank=bank)
    assert [r["prob_score"] for r in plain] == pytest.approx([r["lmm_prob_score"] for r in rows])
    assert all(r["quality_score"] is None for r in plain)


def test_levels_by_the_recorded_edges_follow_the_manifests_rule():
    """The training videos' MOS binned by their own recorded edges are the levels the manifest gave them."""
    from pipeline.core.levels import levels

    mos = np.random.default_rng(0).uniform(0, 100, 57).round(1)
    mos[:6] = np.percentile(mos, 33)  # ties on an edge
    assert qp.levels_by_edges(mos, qp.level_edges(mos)) == list(levels(mos))


def test_fitting_the_prior_leaves_the_seed_alone(adapter_file):
    """A run with the prior trains exactly as the same run without it (only the scores are blended)."""
    arrays = videos(4, 3)
    torch.manual_seed(0)
    qp.fit_prior({"d": FakeFeatures(arrays, adapter_file)}, [{"dataset": "d", "id": v, "mos": i * 1.0}
                                                             for i, v in enumerate(arrays)], 0.3)
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))


def _predictions(n=12, prior=True, seed=0):
    rng = np.random.default_rng(seed)
    mos = np.linspace(10, 90, n)
    lmm = mos + rng.normal(0, 20, n)
    quality = mos + rng.normal(0, 5, n) if prior else np.full(n, np.nan)
    return pd.DataFrame({"id": [f"v{i}" for i in range(n)], "mos": mos, "score": lmm.round(), "invalid": False,
                         "prob_score": 0.5 * lmm + 0.5 * quality if prior else lmm, "lmm_prob_score": lmm,
                         "quality_score": quality})


def test_a_blended_score_is_called_an_ensemble_and_the_head_is_measured_beside_it():
    m = compute_metrics(_predictions(), bootstrap=0)
    assert m["prob_ensemble"]["method"] == "prob" and m["prob_ensemble"]["alone"] == "lmm_prob"
    assert m["methods"]["prob"]["note"].startswith("an ensemble: the answer head's score blended")
    alone = compute_metrics(_predictions().assign(prob_score=lambda d: d["lmm_prob_score"]), bootstrap=0)
    assert m["methods"]["lmm_prob"]["srcc"] == pytest.approx(alone["methods"]["prob"]["srcc"])
    assert m["methods"]["prob"]["srcc"] > m["methods"]["lmm_prob"]["srcc"]  # the adapter's part is closer here
    plain = compute_metrics(_predictions(prior=False), bootstrap=0)
    assert "prob_ensemble" not in plain and set(plain["methods"]) == {"text", "prob"}
    folds = [{**compute_metrics(_predictions(seed=f), bootstrap=0), "fold": f} for f in range(3)]
    agg = aggregate_folds(folds)
    assert agg["prob_ensemble"] == m["prob_ensemble"] and "lmm_prob" in agg["aggregate"]
    assert agg["methods"]["lmm_prob"]["srcc"] == pytest.approx(np.mean([f["methods"]["lmm_prob"]["srcc"] for f in folds]))
    assert agg["methods"]["prob"]["note"].startswith("an ensemble")
    assert "prob_ensemble" not in aggregate_folds([{**plain, "fold": 0, "ensemble": 1}, {**plain, "fold": 1, "ensemble": 1}])
    row = metrics_rows([m])[0]
    assert [x["name"] for x in row["methods"]] == ["text", "prob", "lmm_prob"]
    assert [x["label"] for x in row["methods"]][1:] == ["prob (ensemble: answer head + quality adapter)",
                                                        "prob of the answer head alone"]
    # evaluate's metrics.json counts an experiment's member models as `ensemble`: not a blended score
    assert [x["label"] for x in metrics_rows([{**plain, "ensemble": 1}])[0]["methods"]] == ["text", "prob"]
