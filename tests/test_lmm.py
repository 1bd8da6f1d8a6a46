"""The LMM-VQA model: overfitting, save/load, the paper loading path, LoRA, inference API."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.core import resolve
from pipeline.core.config import validate
from pipeline.features.stores.store_reader import collate_videos
from pipeline.model.lmm import LMMVQA
from pipeline.model.projector import pool_time
from pipeline.model.prompt_format import PromptFormatter
from pipeline.model.tokenizer import VIDEO_TOKEN, load_tokenizer, train_tokenizer
from pipeline.prompts.shards import load_templates, question_for

INFO = {"vision_tokens": 6, "vision_width": 32, "motion_dim": 12}
SMALL_LLM = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
             "num_key_value_heads": 2}


def _cfg(llm_source=None, llm_config=None, **training):
    llm = {"config": dict(SMALL_LLM if llm_config is None else llm_config)}
    if llm_source:
        llm = {"source": str(llm_source)}
    return validate({"datasets": {"d": {"format": "generic", "labels": "l.csv"}},
                     "models": {"preset": "tiny", "llm": llm}, "training": training})


def build_lmm(cfg, tokenizer, info, **kw):
    """`LMMVQA.build` with the pieces of a config's resolved settings (the LLM spec, training, prompts)."""
    s = resolve.of(cfg)
    return LMMVQA.build(s.models["llm"], s.training, s.prompts, tokenizer, info, **kw)


@pytest.fixture(scope="module")
def tok():
    bank = load_templates()
    return train_tokenizer([{"question": q, "answer": "1.5"} for q in bank["score"] + bank["level"]])


def _data(n=8, seed=0):
    rng = np.random.default_rng(seed)
    bank = load_templates()
    vids, qs, ans = [], [], []
    for i in range(n):
        k, s = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        vids.append((rng.normal(size=(k, INFO["vision_tokens"], INFO["vision_width"])).astype(np.float16),
                     rng.normal(size=(s, INFO["motion_dim"])).astype(np.float16)))
        qtype = "score" if i % 2 == 0 else "level"
        qs.append(question_for(f"v{i}", qtype, 0, bank)[1])
        ans.append(f"{rng.uniform(0, 100):.3f}" if qtype == "score" else ("good", "fair", "poor")[i % 3])
    return vids, qs, ans


def _fit(model, vids, qs, ans, steps, lr=3e-3):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    batch = collate_videos(vids)
    loss = None
    for _ in range(steps):
        loss = model.loss(batch, qs, ans)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


@pytest.fixture(scope="module")
def trained(tok):
    torch.manual_seed(0)
    model = build_lmm(_cfg(), tok, INFO, seed=0)
    vids, qs, ans = _data()
    loss = _fit(model, vids, qs, ans, 150)
    return model, vids, qs, ans, loss


def test_overfits_eight_samples(trained):
    model, vids, qs, ans, loss = trained
    assert loss < 0.02
    assert model.generate(collate_videos(vids), qs, max_new_tokens=8) == ans


def test_save_load_identical_outputs(trained, tmp_path):
    model, vids, qs, ans, _ = trained
    model.save_pretrained(tmp_path / "m")
    for name in ("lmmvqa.json", "projector.safetensors", "llm/model.safetensors", "tokenizer/tokenizer.json"):
        assert (tmp_path / "m" / name).exists()
    again = LMMVQA.from_pretrained(tmp_path / "m", device="cpu")
    batch = collate_videos(vids)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.loss(batch, qs, ans), again.loss(batch, qs, ans))
    assert again.generate(batch, qs) == model.generate(batch, qs)
    cands = [f"{i}." for i in range(101)]
    assert np.array_equal(again.candidate_logprobs(batch, qs, cands), model.candidate_logprobs(batch, qs, cands))


def test_candidate_logprobs_match_loss_and_generation(trained):
    model, vids, qs, ans, _ = trained
    model.eval()
    batch = collate_videos(vids[:1])
    # full answer + eos: log-probability = -(mean token loss x token count)
    lp = model.candidate_logprobs(batch, qs[:1], [ans[0]], append_eos=True)
    with torch.no_grad():
        loss = model.loss(collate_videos(vids[:1]), qs[:1], ans[:1])
    n_tok = len(model.formatter.answer_ids(ans[0]))
    assert lp[0, 0] == pytest.approx(-float(loss) * n_tok, abs=1e-4)
    # integer parts: the trained score answer's integer part is the most likely of 0..100
    cands = [f"{i}." for i in range(101)]
    lps = model.candidate_logprobs(collate_videos(vids[::2]), qs[::2], cands, max_pairs=37)
    assert lps.shape == (4, 101)
    assert [int(a.split(".")[0]) for a in ans[::2]] == list(lps.argmax(1))
    lv = model.candidate_logprobs(collate_videos(vids[1::2]), qs[1::2], ["good", "fair", "poor"])
    assert [("good", "fair", "poor")[j] for j in lv.argmax(1)] == ans[1::2]
    # single-video batches give the same numbers as the padded batch (left padding, masks)
    one = model.candidate_logprobs(collate_videos(vids[2:3]), qs[2:3], cands)
    assert np.allclose(one[0], lps[1], atol=1e-4)


def test_padding_and_pooling():
    x = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [4.0], [6.0]]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert pool_time(x, mask, "mean")[:, 0].tolist() == [2.0, 4.0]
    assert pool_time(x, mask, "max")[:, 0].tolist() == [3.0, 6.0]


def test_visual_tokens_replace_placeholder(tok):
    model = build_lmm(_cfg(pooling="max"), tok, INFO, seed=1)
    f = model.formatter
    enc = f.batch(["Rate it.", "A much longer question about the quality of it."], ["1.5", "good"])
    ids = enc["input_ids"]
    assert int((ids == f.video_id).sum(1)[0]) == INFO["vision_tokens"] + 1
    assert enc["attention_mask"][0, 0] == 0 and enc["attention_mask"][:, -1].tolist() == [1, 1]  # left padding
    assert enc["labels"][0, -1] == tok.eos_token_id
    vids, _, _ = _data(2)
    emb = model.input_embeds(collate_videos(vids), ids)
    vis = model.visual_embeds(collate_videos(vids))
    assert torch.allclose(emb[1][ids[1] == f.video_id], vis[1])


def test_paper_path_loads_local_pretrained_folder(tok, tmp_path):
    """A save_pretrained LLM + tokenizer folder loads as `models.llm.source` (the paper preset's path);
    the LLM stays frozen (stage 1) and the model folder then holds no LLM weights."""
    torch.manual_seed(0)
    donor = build_lmm(_cfg(), tok, INFO, seed=3)
    donor.llm.save_pretrained(tmp_path / "hub")
    tok.save_pretrained(str(tmp_path / "hub"))
    cfg = _cfg(llm_source=tmp_path / "hub")
    src_tok = load_tokenizer(tmp_path / "hub")
    model = build_lmm(cfg, src_tok, INFO, seed=0)
    assert model.config["train_llm"] is False
    assert not any(p.requires_grad for p in model.llm.parameters())
    sd_a, sd_b = donor.llm.state_dict(), model.llm.state_dict()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    vids, qs, ans = _data(4)
    _fit(model, vids, qs, ans, 3)
    assert all(torch.equal(sd_a[k], model.llm.state_dict()[k]) for k in sd_a)  # frozen
    model.save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m" / "llm").exists() and not (tmp_path / "m" / "adapter").exists()
    again = LMMVQA.from_pretrained(tmp_path / "m")
    batch = collate_videos(vids)
    model.eval()
    assert again.generate(batch, qs) == model.generate(batch, qs)
    assert np.array_equal(again.candidate_logprobs(batch, qs, ["good", "fair"]),
                          model.candidate_logprobs(batch, qs, ["good", "fair"]))


def test_lora_adapter_round_trip(tok, tmp_path):
    torch.manual_seed(0)
    donor = build_lmm(_cfg(), tok, INFO, seed=3)
    donor.llm.save_pretrained(tmp_path / "hub")
    tok.save_pretrained(str(tmp_path / "hub"))
    cfg = _cfg(llm_source=tmp_path / "hub", lora={"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0})
    model = build_lmm(cfg, load_tokenizer(tmp_path / "hub"), INFO, seed=0)
    trainable = [n for n, p in model.llm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    vids, qs, ans = _data(4)
    _fit(model, vids, qs, ans, 3, lr=1e-2)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "adapter").is_dir() and not (tmp_path / "m" / "llm").exists()
    again = LMMVQA.from_pretrained(tmp_path / "m")
    batch = collate_videos(vids)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model.loss(batch, qs, ans), again.loss(batch, qs, ans), atol=1e-6)
    assert again.generate(batch, qs) == model.generate(batch, qs)


def test_prompt_formatter_chat_style(tok):
    """A tokenizer with a chat template (paper) formats through it; one placeholder expanded."""
    import copy

    chat_tok = copy.deepcopy(tok)
    chat_tok.chat_template = ("{% for m in messages %}<s> {{ m['content'] }}{% endfor %}"
                              "{% if add_generation_prompt %} Answer:{% endif %}")
    f = PromptFormatter(chat_tok, 5)
    assert f.style == "chat"
    assert f.prompt_text("Rate it.") == f"<s> {VIDEO_TOKEN}\nRate it. Answer:"
    assert f.prompt_ids("Rate it.").count(f.video_id) == 5
