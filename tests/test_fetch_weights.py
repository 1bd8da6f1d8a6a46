"""`lmmvqa fetch-weights` with the hub mocked (nothing is downloaded): the right repos and revisions are
asked for, files are checked against the hub's metadata, a gated repo is one line, and the workflow's
jobs run offline."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import REPO

from pipeline import workflow
from pipeline.core import resolve
from pipeline.cli import main as cli_main
from pipeline.cli import offline_weights_missing
from pipeline.core.errors import UserError
from pipeline.features.encoding import fetch

LLAMA, CLIP = "meta-llama/Meta-Llama-3-8B-Instruct", "openai/clip-vit-large-patch14"
FILES = {"config.json": b'{"hidden_size": 8}', "model.safetensors": b"weights" * 100, "tf_model.h5": b"tf",
         "original/consolidated.00.pth": b"meta copy", "tokenizer.json": b"{}"}


def hub_error(cls, message):
    """A huggingface_hub HTTP error as the hub client raises it (it wants the HTTP response)."""
    from huggingface_hub import errors

    transport = sys.modules[errors.Response.__module__.split(".")[0]]
    response = errors.Response(403, request=transport.Request("GET", "https://huggingface.co/api/models/x"))
    return cls(message, response=response)


class FakeHub:
    """HfApi.model_info + snapshot_download: records what is asked, 'downloads' FILES."""

    def __init__(self, gated=(), corrupt=()):
        self.gated, self.corrupt, self.info_calls, self.downloads = set(gated), set(corrupt), [], []

    def model_info(self, repo, revision=None, files_metadata=False):
        self.info_calls.append((repo, revision, files_metadata))
        if repo in self.gated:
            from huggingface_hub.errors import GatedRepoError

            raise hub_error(GatedRepoError, f"403 Client Error. Cannot access gated repo for url .../{repo}.")
        siblings = [SimpleNamespace(rfilename=name, size=len(data),
                                    lfs=SimpleNamespace(sha256=hashlib.sha256(data).hexdigest())
                                    if name.endswith((".safetensors", ".h5", ".pth")) else None)
                    for name, data in FILES.items()]
        return SimpleNamespace(sha="c0ffee" * 6 + "abcd", siblings=siblings)

    def download(self, repo, revision=None, allow_patterns=None, ignore_patterns=None, local_dir=None):
        self.downloads.append({"repo": repo, "revision": revision, "allow": allow_patterns, "ignore": ignore_patterns,
                               "local_dir": local_dir})
        folder = Path(local_dir)
        for name, data in FILES.items():
            if fetch.wanted(name):
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                damaged = repo in self.corrupt and name.endswith(".safetensors")
                (folder / name).write_bytes(b"X" * len(data) if damaged else data)  # same size, other bytes
        return str(folder)


@pytest.fixture
def online(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_the_paper_preset_asks_for_each_repo_at_its_pinned_commit():
    items = {i["role"]: i for i in fetch.plan(fetch.preset_models("paper"))}
    assert (items["vision"]["kind"], items["vision"]["source"], items["vision"]["revision"]) == (
        "hub", CLIP, fetch.PINNED[CLIP])
    assert (items["llm"]["kind"], items["llm"]["source"], items["llm"]["revision"]) == ("hub", LLAMA, fetch.PINNED[LLAMA])
    assert (items["motion"]["kind"], items["motion"]["source"]) == ("torch_hub", "slowfast_r50")
    assert all(len(rev) == 40 for rev in fetch.PINNED.values())
    revised = {i["role"]: i["revision"] for i in fetch.plan(fetch.preset_models("paper"), {"llm": "main"})}
    assert revised["llm"] == "main" and revised["vision"] == fetch.PINNED[CLIP]
    offline = {i["role"]: i["kind"] for i in fetch.plan(fetch.preset_models("offline"))}
    assert offline == {"vision": "packaged", "motion": "none", "llm": "random"}
    with pytest.raises(UserError, match="--revision for motion"):
        fetch.plan(fetch.preset_models("paper"), {"motion": "x"})
    with pytest.raises(UserError, match="ROLE=REVISION"):
        fetch.parse_revisions(["llama=abc"])


def test_fetch_downloads_the_wanted_files_of_one_commit_and_verifies_them(tmp_path, online, monkeypatch):
    hub = FakeHub()
    checked = []
    monkeypatch.setattr(fetch, "verify_slowfast", lambda path, role: checked.append(path))
    slowfast = b"slowfast checkpoint"
    done, errors = fetch.fetch(fetch.preset_models("paper"), tmp_path / "w", api=hub, hub_download=hub.download,
                               url_download=lambda url, dst: Path(dst).write_bytes(slowfast))
    assert errors == []
    assert [c[0] for c in hub.info_calls] == [CLIP, LLAMA] and all(c[2] for c in hub.info_calls)
    assert [c[1] for c in hub.info_calls] == [fetch.PINNED[CLIP], fetch.PINNED[LLAMA]]
    commit = "c0ffee" * 6 + "abcd"
    assert [d["revision"] for d in hub.downloads] == [commit, commit]  # exactly the commit checked
    assert hub.downloads[1]["ignore"] == ["original/*"] and "*.safetensors" in hub.downloads[1]["allow"]
    by_role = {d["role"]: d for d in done}
    llm = by_role["llm"]
    assert llm["path"] == str((tmp_path / "w" / "meta-llama--Meta-Llama-3-8B-Instruct").resolve())
    assert sorted(f["file"] for f in llm["files"]) == ["config.json", "model.safetensors", "tokenizer.json"]
    weights = next(f for f in llm["files"] if f["file"] == "model.safetensors")
    assert weights["sha256"] == hashlib.sha256(FILES["model.safetensors"]).hexdigest()
    motion = by_role["motion"]
    assert motion["path"].endswith("slowfast_r50/SLOWFAST_8x8_R50.pyth") and checked == [Path(motion["path"])]
    assert motion["files"][0]["sha256"] == hashlib.sha256(slowfast).hexdigest()
    assert motion["url"].endswith("/kinetics/SLOWFAST_8x8_R50.pyth")
    lines = fetch.instructions(done, tmp_path / "w")
    assert f"  llm: {{source: {llm['path']}}}" in lines and f"  motion: {{source: {motion['path']}}}" in lines


def test_the_slowfast_url_is_pytorchvideos_own():
    from pytorchvideo.models.hub import slowfast as hub_slowfast

    from pipeline.features.encoding.encoders import SLOWFAST_R50_URL

    assert SLOWFAST_R50_URL == hub_slowfast.checkpoint_paths["slowfast_r50"]
    assert fetch.TORCH_HUB["slowfast_r50"] == Path(SLOWFAST_R50_URL).name


def test_a_gated_repo_is_one_line_and_the_others_still_download(tmp_path, online, monkeypatch, capsys):
    hub = FakeHub(gated={LLAMA})
    monkeypatch.setattr(fetch, "verify_slowfast", lambda path, role: None)
    done, errors = fetch.fetch(fetch.preset_models("paper"), tmp_path, api=hub, hub_download=hub.download,
                               url_download=lambda url, dst: Path(dst).write_bytes(b"x"))
    assert [d["role"] for d in done] == ["vision", "motion"]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert errors[0].startswith(f"{LLAMA} (llm) is gated: accept its licence at https://huggingface.co/{LLAMA}")
    assert "hf auth login" in errors[0] and "HF_TOKEN" in errors[0]

    # the command, with the hub client's own entry points mocked: exit code 2, the line on stderr, the
    # record of what did download
    import huggingface_hub
    import torch

    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: hub)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, dst, progress=True: Path(dst).write_bytes(b"x"))
    assert cli_main(["fetch-weights", "--preset", "paper", "--to", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "lmmvqa fetch-weights: error: meta-llama/Meta-Llama-3-8B-Instruct (llm) is gated" in err
    record = json.loads((tmp_path / "d" / fetch.LOCK_FILE).read_text())
    assert [r["role"] for r in record] == ["vision", "motion"] and record[0]["revision"] == "c0ffee" * 6 + "abcd"


def test_a_damaged_download_is_caught(tmp_path, online):
    hub = FakeHub(corrupt={CLIP})
    models = resolve.resolve({"datasets": {"none": {"format": "generic", "labels": "none.csv"}},
                              "models": {"preset": "paper", "motion": {"source": str(tmp_path)}}}).models
    # a local folder for motion: nothing to fetch for it
    done, errors = fetch.fetch(models, tmp_path / "w", api=hub, hub_download=hub.download)
    assert len(errors) == 1 and "model.safetensors: sha256" in errors[0] and "is not the hub's" in errors[0]
    assert {d["role"]: d["kind"] for d in done} == {"motion": "local", "llm": "hub"}


def test_fetching_while_offline_is_refused(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="without HF_HUB_OFFLINE=1"):
        fetch.fetch(fetch.preset_models("paper"))


def test_workflow_jobs_run_offline(monkeypatch):
    env = {}
    assert workflow.offline_jobs(env) == {"HF_HUB_OFFLINE": "1"} and env["HF_HUB_OFFLINE"] == "1"
    assert workflow.offline_jobs({"HF_HUB_OFFLINE": "0"}) == {"HF_HUB_OFFLINE": "0"}  # the user's choice stands
    assert "pipeline_workflow.offline_jobs()" in (REPO / "rules" / "common.smk").read_text()
    # a job that lacks a model's files while offline gets one line that says what to run
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert offline_weights_missing(LocalEntryNotFoundError("Cannot find the requested files in the disk cache"))
    assert not offline_weights_missing(FileNotFoundError("labels.csv"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not offline_weights_missing(LocalEntryNotFoundError("x"))
