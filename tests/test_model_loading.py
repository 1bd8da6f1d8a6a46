"""Loading models as a GPU user would (and device "auto"): weights
missing from a folder are errors naming them; the dtype is recorded and used on load; a reserved
special token serves as the video placeholder (no vocabulary resize); activation checkpointing
changes memory, not numbers; a pretrained LLM is loaded straight onto its device."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_lmm import build_lmm

from pipeline.core import resolve
from pipeline.core.config import validate
from pipeline.core.errors import UserError
from pipeline.features.stores.store_reader import collate_videos
from pipeline.model.llm_loading import training_dtype
from pipeline.model.lmm import LMMVQA
from pipeline.model.tokenizer import VIDEO_TOKEN, load_tokenizer, train_tokenizer, video_token
from pipeline.prompts.shards import load_templates, question_for

INFO = {"vision_tokens": 4, "vision_width": 32, "motion_dim": 8}
SMALL_LLM = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
             "num_key_value_heads": 2}
RESERVED = ["<|reserved_special_token_0|>", "<|reserved_special_token_1|>"]


def _cfg(llm=None, **training):
    return validate({"datasets": {"d": {"format": "generic", "labels": "l.csv"}},
                     "models": {"preset": "tiny", "llm": llm or {"config": dict(SMALL_LLM)}},
                     "training": training})


@pytest.fixture(scope="module")
def tok():
    bank = load_templates()
    return train_tokenizer([{"question": q, "answer": "1.5"} for q in bank["score"] + bank["level"]])


def _data(n=4, seed=0):
    rng = np.random.default_rng(seed)
    bank = load_templates()
    vids = [(rng.normal(size=(2, INFO["vision_tokens"], INFO["vision_width"])).astype(np.float32),
             rng.normal(size=(2, INFO["motion_dim"])).astype(np.float32)) for _ in range(n)]
    qs = [question_for(f"v{i}", "score" if i % 2 == 0 else "level", 0, bank)[1] for i in range(n)]
    ans = [f"{10 * i + 1.5:.3f}" if i % 2 == 0 else "good" for i in range(n)]
    return collate_videos(vids), qs, ans


def _hub(tmp_path, tok, name="hub"):
    """A save_pretrained LLM + tokenizer folder: the paper preset's loading path, offline."""
    donor = build_lmm(_cfg(), tok, INFO, seed=3)
    donor.llm.save_pretrained(tmp_path / name)
    tok.save_pretrained(str(tmp_path / name))
    return tmp_path / name, donor


def _drop_key(file, key):
    state = load_file(str(file))
    assert key in state, sorted(state)
    del state[key]
    save_file(state, str(file), metadata={"format": "pt"})


# ------------------------------------------------------------------ file modes

def test_model_folder_files_are_readable_by_everyone(tok, tmp_path):
    """A model folder is for others to score with (one is committed in the repository): every weight file,
    `projector.safetensors` and the LLM's included, is 0644 under the usual umask, not safetensors' 0600."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        build_lmm(_cfg(), tok, INFO, seed=0).save_pretrained(tmp_path / "m")
    finally:
        os.umask(old)
    files = {p.relative_to(tmp_path / "m").as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in (tmp_path / "m").rglob("*") if p.is_file()}
    assert "projector.safetensors" in files and any(f.startswith("llm/") and f.endswith(".safetensors") for f in files)
    assert {f: oct(m) for f, m in files.items() if m != 0o644} == {}


# ------------------------------------------------------------------ device "auto"

def test_from_pretrained_device_auto(tok, tmp_path):
    model = build_lmm(_cfg(), tok, INFO, seed=0)
    model.save_pretrained(tmp_path / "m")
    again = LMMVQA.from_pretrained(tmp_path / "m", device="auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert again.device.type == expected
    assert next(again.llm.parameters()).device.type == expected


def test_from_pretrained_resolves_the_device_once(tok, tmp_path, monkeypatch):
    """`auto` becomes cpu on a machine without CUDA before anything moves (no `.to("auto")`), and
    `cuda` there is a UserError naming the device (devices.resolve_device), not a torch crash."""
    model = build_lmm(_cfg(), tok, INFO, seed=0)
    model.save_pretrained(tmp_path / "m")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    moved = []
    real_to = torch.nn.Module.to

    def spy(self, *args, **kwargs):
        moved.extend(str(a) for a in (*args, *kwargs.values()))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", spy)
    again = LMMVQA.from_pretrained(tmp_path / "m", device="auto")
    assert again.device == torch.device("cpu") and next(again.llm.parameters()).device == torch.device("cpu")
    assert moved and "auto" not in moved
    with pytest.raises(UserError, match="device 'cuda' requested but CUDA is not available"):
        LMMVQA.from_pretrained(tmp_path / "m", device="cuda")


# ------------------------------------------------------------------ missing weights

def test_missing_llm_weight_in_model_folder_is_named(tok, tmp_path):
    model = build_lmm(_cfg(), tok, INFO, seed=0)  # random-init LLM: saved in llm/
    model.save_pretrained(tmp_path / "m")
    _drop_key(tmp_path / "m" / "llm" / "model.safetensors", "model.layers.1.mlp.up_proj.weight")
    with pytest.raises(UserError, match=r"1 weight\(s\) missing.*model\.layers\.1\.mlp\.up_proj\.weight"):
        LMMVQA.from_pretrained(tmp_path / "m")


def test_missing_projector_weight_is_named(tok, tmp_path):
    model = build_lmm(_cfg(), tok, INFO, seed=0)
    model.save_pretrained(tmp_path / "m")
    _drop_key(tmp_path / "m" / "projector.safetensors", "proj.bias")
    with pytest.raises(UserError, match=r"projector\.safetensors: 1 weight\(s\) missing.*proj\.bias"):
        LMMVQA.from_pretrained(tmp_path / "m")


def test_missing_weight_in_pretrained_llm_source_is_named(tok, tmp_path):
    hub, _ = _hub(tmp_path, tok)
    _drop_key(hub / "model.safetensors", "model.layers.0.self_attn.q_proj.weight")
    with pytest.raises(UserError, match=r"model\.layers\.0\.self_attn\.q_proj\.weight"):
        build_lmm(_cfg(llm={"source": str(hub)}), load_tokenizer(hub), INFO, seed=0)


def test_missing_lora_weight_is_named(tok, tmp_path):
    hub, _ = _hub(tmp_path, tok)
    cfg = _cfg(llm={"source": str(hub)}, lora={"enabled": True, "r": 2, "alpha": 4, "dropout": 0.0})
    model = build_lmm(cfg, load_tokenizer(hub), INFO, seed=0)
    model.save_pretrained(tmp_path / "m")
    f = tmp_path / "m" / "adapter" / "adapter_model.safetensors"
    key = sorted(k for k in load_file(str(f)) if "layers.0.self_attn.v_proj.lora_B" in k)[0]
    _drop_key(f, key)
    with pytest.raises(UserError, match="missing.*layers.0.self_attn.v_proj.lora_B"):
        LMMVQA.from_pretrained(tmp_path / "m")


def test_random_init_llm_without_saved_weights_is_refused(tok, tmp_path):
    """A folder whose random-init LLM was not saved (older versions under LoRA) cannot be rebuilt."""
    build_lmm(_cfg(), tok, INFO, seed=0).save_pretrained(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "lmmvqa.json").read_text())
    (tmp_path / "m" / "lmmvqa.json").write_text(json.dumps({**meta, "llm_weights": "adapter"}))
    with pytest.raises(UserError, match="built at random init and the folder does not hold its weights"):
        LMMVQA.from_pretrained(tmp_path / "m")


def test_missing_vision_weight_is_named(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from pipeline.features.encoding.encoders import load_vision

    conf = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                patch_size=16)
    CLIPVisionModel(CLIPVisionConfig(**conf)).save_pretrained(tmp_path / "clip")
    model, _ = load_vision({"source": str(tmp_path / "clip")})  # complete: loads
    key = next(k for k in load_file(str(tmp_path / "clip" / "model.safetensors")) if k.endswith("layer_norm1.bias"))
    _drop_key(tmp_path / "clip" / "model.safetensors", key)
    with pytest.raises(UserError, match=rf"missing from the checkpoint: {key}"):
        load_vision({"source": str(tmp_path / "clip")})


def test_missing_motion_weight_is_named(tmp_path):
    from pipeline.features.encoding.encoders import load_motion

    spec = {"source": None, "config": {"input_size": 32, "model_depth": 18, "stem_dim_out": 8,
                                       "slowfast_channel_reduction_ratio": 4}}
    model, _ = load_motion(spec, slow_stride=4)
    state = {f"net.{k}": v for k, v in model.net.state_dict().items()}
    torch.save(state, tmp_path / "full.pt")
    load_motion({**spec, "source": str(tmp_path / "full.pt")}, slow_stride=4)  # complete: loads
    key = "blocks.1.multipathway_blocks.0.res_blocks.0.branch2.norm_a.weight"
    assert f"net.{key}" in state
    del state[f"net.{key}"]
    torch.save(state, tmp_path / "part.pt")
    with pytest.raises(UserError, match=rf"1 weight\(s\) missing from the checkpoint: {key}"):
        load_motion({**spec, "source": str(tmp_path / "part.pt")}, slow_stride=4)


# ------------------------------------------------------------------ dtype

def test_training_dtype_auto():
    paper, tiny = {"source": "meta-llama/Meta-Llama-3-8B-Instruct"}, {"source": None}
    assert training_dtype({"dtype": None}, paper, "cuda") == torch.bfloat16  # auto: pretrained on CUDA
    assert training_dtype({"dtype": None}, tiny, "cuda:1") == torch.float32
    assert training_dtype({"dtype": None}, paper, "cpu") == torch.float32  # autocast on CUDA only
    assert training_dtype({"dtype": "float16"}, paper, "cuda") == torch.float16
    assert training_dtype({"dtype": "bfloat16"}, tiny, "cpu") == torch.float32
    assert _cfg()["training"]["dtype"] is None  # the schema default is auto


def test_dtype_recorded_and_used_on_load(tok, tmp_path):
    hub, _ = _hub(tmp_path, tok)
    cfg = _cfg(llm={"source": str(hub), "dtype": "bfloat16"})
    model = build_lmm(cfg, load_tokenizer(hub), INFO, seed=0)
    assert next(model.llm.parameters()).dtype == torch.bfloat16
    assert next(model.projector.parameters()).dtype == torch.float32  # trained weights stay float32
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "lmmvqa.json").read_text())["dtype"] == "bfloat16"
    again = LMMVQA.from_pretrained(tmp_path / "m")
    assert next(again.llm.parameters()).dtype == torch.bfloat16
    batch, qs, _ = _data(2)
    assert again.generate(batch, qs) == model.eval().generate(batch, qs)
    override = LMMVQA.from_pretrained(tmp_path / "m", dtype="float32")
    assert next(override.llm.parameters()).dtype == torch.float32
    with pytest.raises(UserError, match="unknown dtype 'float8'"):
        LMMVQA.from_pretrained(tmp_path / "m", dtype="float8")
    # a model trained on CPU records float32
    build_lmm(_cfg(), tok, INFO, seed=0).save_pretrained(tmp_path / "cpu")
    assert json.loads((tmp_path / "cpu" / "lmmvqa.json").read_text())["dtype"] == "float32"


def test_float16_llm_weights_that_train_are_refused(tok):
    with pytest.raises(UserError, match="float16 is refused"):
        build_lmm(_cfg(llm={"config": dict(SMALL_LLM), "dtype": "float16"}, train_llm=True), tok, INFO, seed=0)


def test_float16_uses_a_grad_scaler():
    """fp16: the loss is scaled, a finite step applies the unscaled gradient, an overflowing one is
    skipped (weights unchanged) and halves the scale."""
    from pipeline.training.train import Precision

    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 1)
    ref = torch.nn.Linear(4, 1)
    ref.load_state_dict(lin.state_dict())
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    x = torch.randn(8, 4)
    p = Precision(torch.float16, "cpu")
    assert p.scaler.is_enabled() and p.scaler.get_scale() == 65536.0
    with p.autocast():
        loss = lin(x).float().mean() * 1e-3
    p.backward(loss)
    (ref(x).mean() * 1e-3).backward()
    p.step(opt, list(lin.parameters()), 1.0)
    assert torch.allclose(lin.weight.grad, ref.weight.grad, rtol=1e-2, atol=1e-6)  # unscaled
    assert not torch.equal(lin.weight.detach(), ref.weight.detach())  # the step applied
    opt.zero_grad()
    before = lin.weight.detach().clone()
    with p.autocast():
        loss = lin(x).float().mean() * 1e30
    p.backward(loss)
    p.step(opt, list(lin.parameters()), 1.0)
    assert torch.equal(lin.weight.detach(), before) and p.scaler.get_scale() == 32768.0
    assert not Precision(torch.bfloat16, "cpu").scaler.is_enabled()


# ------------------------------------------------------------------ reserved special token

def _reserved_tokenizer():
    """A small word-level tokenizer that has reserved special tokens (like Llama-3) and no <video>."""
    from tokenizers import Tokenizer, decoders, models, trainers
    from transformers import PreTrainedTokenizerFast

    from pipeline.model.tokenizer import _pre_tokenizer, corpus

    bank = load_templates()
    samples = [{"question": q, "answer": "12.5"} for q in bank["score"] + bank["level"]]
    t = Tokenizer(models.WordLevel(unk_token="<unk>"))
    t.pre_tokenizer = _pre_tokenizer()
    t.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="never")
    t.train_from_iterator(corpus(samples), trainer=trainers.WordLevelTrainer(
        special_tokens=["<pad>", "<s>", "</s>", "<unk>", *RESERVED], show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=RESERVED)


def test_reserved_token_is_the_placeholder_without_resize(tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig

    src = _reserved_tokenizer()
    n = len(src)
    assert video_token(src) == RESERVED[0] and VIDEO_TOKEN not in src.get_vocab()
    hub = tmp_path / "hub"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(LlamaConfig(**SMALL_LLM, vocab_size=n, bos_token_id=src.bos_token_id,
                                                 eos_token_id=src.eos_token_id, pad_token_id=src.pad_token_id,
                                                 tie_word_embeddings=False)).save_pretrained(hub)
    src.save_pretrained(str(hub))
    emb = load_file(str(hub / "model.safetensors"))["model.embed_tokens.weight"]
    tok = load_tokenizer(hub)
    assert len(tok) == n and VIDEO_TOKEN not in tok.get_vocab()  # nothing added
    model = build_lmm(_cfg(llm={"source": str(hub)}), tok, INFO, seed=0)
    assert model.formatter.placeholder == RESERVED[0] and model.config["placeholder_token"] == RESERVED[0]
    assert model.formatter.video_id == src.convert_tokens_to_ids(RESERVED[0])
    assert torch.equal(model.llm.get_input_embeddings().weight, emb)  # no resize, no new row
    enc = model.formatter.batch(["Rate the video."], ["12.5"])
    assert int((enc["input_ids"] == model.formatter.video_id).sum()) == INFO["vision_tokens"] + 1
    batch, qs, ans = _data(2)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = model.loss(batch, qs, ans)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(tmp_path / "m")
    again = LMMVQA.from_pretrained(tmp_path / "m")
    assert again.formatter.placeholder == RESERVED[0]
    assert again.llm.get_input_embeddings().weight.shape[0] == n
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.loss(batch, qs, ans), again.loss(batch, qs, ans))


# ------------------------------------------------------------------ memory options

def test_gradient_checkpointing_same_loss_and_gradients(tok):
    """On/off: identical loss and gradients; on: each decoder layer runs again in the backward pass."""
    batch, qs, ans = _data(4)
    results = {}
    for on in (False, True):
        model = build_lmm(_cfg(gradient_checkpointing=on), tok, INFO, seed=0)
        model.train()
        calls = []  # runs of the MLP inside decoder layer 0
        mlp = model.llm.model.layers[0].mlp
        mlp.forward = (lambda f: lambda *a, **k: calls.append(1) or f(*a, **k))(mlp.forward)
        loss = model.loss(batch, qs, ans)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[on] = (float(loss.detach()), grads, len(calls))
    assert results[False][2] == 1 and results[True][2] == 2
    assert results[True][0] == results[False][0]
    g0, g1 = results[False][1], results[True][1]
    assert g0.keys() == g1.keys() and len(g0) > 10
    assert all(torch.allclose(g0[k], g1[k], atol=1e-6) for k in g0)


def test_pretrained_llm_is_loaded_straight_onto_its_device(tok, tmp_path, monkeypatch):
    """from_pretrained gets device_map={'': device}: weights go to the device while loading (no full
    CPU copy per DDP rank), in the requested dtype."""
    import transformers

    from pipeline.model import llm_loading

    hub, _ = _hub(tmp_path, tok)
    seen = {}
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(source, **kw):
        seen.update(kw)
        return real(source, **{**kw, "device_map": {"": "cpu"}})

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    llm = llm_loading.load_llm({"source": str(hub)}, load_tokenizer(hub), dtype=torch.bfloat16, device="cuda:1")
    assert seen["device_map"] == {"": "cuda:1"} and seen["dtype"] == torch.bfloat16
    assert next(llm.parameters()).dtype == torch.bfloat16


def test_evaluate_and_score_load_in_the_recorded_or_given_dtype(tmp_path, monkeypatch):
    from test_train import make_workspace

    from pipeline.cli import main
    from pipeline.core import paths
    from pipeline.evaluation.score_files import Scorer
    from pipeline.training.train import train

    cfg = make_workspace(tmp_path, training={"batch_size": 4, "val_fraction": 0.0})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.yaml").write_text(json.dumps(cfg))
    train(resolve.of(cfg), "exp", paths.model_dir("exp"), max_steps=1, progress=False)
    assert json.loads((paths.model_dir("exp") / "lmmvqa.json").read_text())["dtype"] == "float32"  # CPU
    loaded = []
    real = LMMVQA.from_pretrained.__func__

    def spy(cls, *a, **kw):
        model = real(cls, *a, **kw)
        loaded.append(next(model.llm.parameters()).dtype)
        return model

    monkeypatch.setattr(LMMVQA, "from_pretrained", classmethod(spy))
    args = ["evaluate", "--config", "cfg.yaml", "--experiment", "exp", "--test", "syn:test", "--out", "p.csv", "--metrics", "m.json"]
    assert main(args) == 0 and main([*args, "--dtype", "bfloat16"]) == 0
    assert Scorer(paths.model_dir("exp"), dtype="bfloat16").model is not None
    assert loaded == [torch.float32, torch.bfloat16, torch.bfloat16]
