"""`lmmvqa fetch-weights`: download every pretrained weight a preset (or config) names, on a machine with
internet, so that the workflow's jobs never touch the network (they run with HF_HUB_OFFLINE=1).

    lmmvqa fetch-weights --preset paper [--to DIR] [--revision ROLE=REV ...] [--no-verify]
    lmmvqa fetch-weights --config my.yaml [--to DIR]

* Hub repos (CLIP, Llama-3): `huggingface_hub.snapshot_download` of one commit -- the pinned one below
  (`PINNED`), or `--revision ROLE=REV` -- with only the files the loaders read (`ALLOW`, not the
  TensorFlow / Flax / original-format copies). Then each file is checked against the hub's record of
  that commit: its size, and the sha256 of every LFS file (the weights).
* SlowFast R50 (`slowfast_r50`): the pytorchvideo checkpoint at `encoders.SLOWFAST_R50_URL` (the URL
  pytorchvideo's `slowfast_r50(pretrained=True)` loads; no hash is published, so it is verified by loading
  it, with `weights_only`, into the architecture: no missing or unexpected keys), and its sha256 is
  recorded so `models.motion.sha256` can pin it.
* `--to DIR`: every model into its own folder under DIR; prints the `models.<role>.source` lines that
  point the config at them. Without it: into the Hugging Face cache (`HF_HOME`) and the torch hub cache
  (`TORCH_HOME`); prints those variables for the compute nodes (a shared folder), and the source lines
  of the downloaded snapshots (they pin the commit).
* `DIR/lmmvqa-weights.json` (or `$HF_HOME/lmmvqa-weights.json`): what was fetched (role, source,
  commit, files, sha256).

A gated repo (Llama-3: accept the licence on its hub page, then a token of that account through
`hf auth login` or `HF_TOKEN`), a missing repo or revision, or no network give one line each naming the
repo and what to do; the other roles still download, and the exit code is 2.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
from pathlib import Path

from pipeline.cli_args import add_no_progress_arg
from pipeline.core import atomic
from pipeline.core import resolve
from pipeline.core.resolve import ROLES
from pipeline.core.config import presets, validate
from pipeline.core.errors import UserError
from pipeline.features.encoding.weights import sha256_of

# Commits fetched unless --revision says otherwise (found as the snapshot folders of these repos in
# public Hugging Face caches: 32bd642 is the CLIP commit with model.safetensors)
PINNED = {
    "openai/clip-vit-large-patch14": "32bd64288804d66eefd0ccbe215aa642df71cc41",
    "meta-llama/Meta-Llama-3-8B-Instruct": "8afb486c1db24fe5011ec46dfbe5b5dccdb575c2",
}
# what the loaders read: configs, tokenizer files, safetensors weights
ALLOW = ["*.json", "*.safetensors", "*.txt"]
IGNORE = ["original/*"]  # Llama-3's second copy of the weights in Meta's own format (16 GB)
TORCH_HUB = {"slowfast_r50": "SLOWFAST_8x8_R50.pyth"}
LOCK_FILE = "lmmvqa-weights.json"


def wanted(name: str) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in ALLOW) and not any(fnmatch.fnmatch(name, p) for p in IGNORE)


def plan(models: dict, revisions: dict[str, str] | None = None) -> list[dict]:
    """What each role needs: {role, kind: hub | torch_hub | local | packaged | random, source, revision};
    `models`: role -> the resolved `ModelSpec` (`Settings.models`)."""
    revisions = revisions or {}
    items = []
    for role in ROLES:
        spec = models[role]
        source = spec.source
        item = {"role": role, "source": source, "revision": None}
        if not source:
            item["kind"] = "packaged" if spec.weights else ("none" if spec.arch else "random")
        elif str(source) in TORCH_HUB:
            item["kind"] = "torch_hub"
        elif Path(str(source)).expanduser().exists():
            item["kind"] = "local"
        else:
            item["kind"] = "hub"
            item["revision"] = revisions.get(role) or PINNED.get(str(source)) or "main"
        items.append(item)
    unknown = set(revisions) - {i["role"] for i in items if i["kind"] == "hub"}
    if unknown:
        raise UserError(f"--revision for {', '.join(sorted(unknown))}: no hub repo in that role")
    return items


def hub_error(repo: str, role: str, exc: Exception) -> str:
    """One line saying what went wrong with a hub repo and what to do."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(exc, GatedRepoError):
        return (f"{repo} ({role}) is gated: accept its licence at https://huggingface.co/{repo} while logged in, "
                "then give this machine a token of that account (`hf auth login`, or HF_TOKEN=...) and run again")
    if isinstance(exc, RevisionNotFoundError):
        return f"{repo} ({role}): revision not found ({_first_line(exc)}); pass --revision {role}=<commit or branch>"
    if isinstance(exc, RepositoryNotFoundError):
        return (f"{repo} ({role}): repository not found or private (check models.{role}.source; a private repo "
                "needs `hf auth login`)")
    return f"{repo} ({role}): download failed, no network or hub error? ({type(exc).__name__}: {_first_line(exc)})"


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


def fetch_hub(item: dict, to: Path | None, verify: bool, api=None, download=None) -> dict:
    """One hub repo at one commit; its files checked against the hub's metadata of that commit."""
    from huggingface_hub import HfApi, snapshot_download

    api = api or HfApi()
    download = download or snapshot_download
    repo, role = str(item["source"]), item["role"]
    try:
        info = api.model_info(repo, revision=item["revision"], files_metadata=True)
        commit = info.sha
        files = [s for s in (info.siblings or []) if wanted(s.rfilename)]
        if not files:
            raise UserError(f"{repo} ({role}): no weight or config files at {commit} (looked for {', '.join(ALLOW)})")
        local_dir = None if to is None else to / repo.replace("/", "--")
        folder = Path(download(repo, revision=commit, allow_patterns=ALLOW, ignore_patterns=IGNORE,
                               local_dir=local_dir))
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - every hub failure becomes its one line
        raise UserError(hub_error(repo, role, exc)) from None
    checked = []
    for s in files:
        path = folder / s.rfilename
        if not path.is_file():
            raise UserError(f"{repo} ({role}): {s.rfilename} missing after the download in {folder}")
        record = {"file": s.rfilename, "size": path.stat().st_size}
        if verify and s.size is not None and record["size"] != s.size:
            raise UserError(f"{path}: {record['size']} bytes, the hub says {s.size} at {commit} (a truncated download? run again)")
        if verify and s.lfs is not None:
            record["sha256"] = sha256_of(path)
            if record["sha256"] != s.lfs.sha256:
                raise UserError(f"{path}: sha256 {record['sha256']} is not the hub's {s.lfs.sha256} at {commit}; "
                                "delete it and run again")
        checked.append(record)
    return {**item, "revision": commit, "path": str(folder.resolve()), "files": checked,
            "verified": "sizes + sha256 of LFS files" if verify else "no"}


def fetch_torch_hub(item: dict, to: Path | None, verify: bool, download=None) -> dict:
    """The SlowFast checkpoint from its torch hub URL, into DIR or $TORCH_HOME/hub/checkpoints."""
    import torch

    from pipeline.features.encoding.encoders import SLOWFAST_R50_URL

    name = TORCH_HUB[str(item["source"])]
    folder = (to / str(item["source"])) if to is not None else Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / name
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        download = download or (lambda url, dst: torch.hub.download_url_to_file(url, str(dst), progress=True))
        try:
            download(SLOWFAST_R50_URL, path)
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"{SLOWFAST_R50_URL} ({item['role']}): download failed, no network? "
                            f"({type(exc).__name__}: {_first_line(exc)})") from None
    record = {"file": name, "size": path.stat().st_size, "sha256": sha256_of(path)}
    if verify:
        verify_slowfast(path, item["role"])
    return {**item, "url": SLOWFAST_R50_URL, "path": str(path.resolve()), "files": [record],
            "verified": "loaded into SlowFast R50 (weights_only, no missing or unexpected keys)" if verify else "no"}


def verify_slowfast(path: Path, role: str) -> None:
    """Load the checkpoint, with weights_only, into the preset's SlowFast R50: every key must match."""
    from pipeline.features.encoding.encoders import load_motion

    try:
        load_motion({"source": str(path), "config": {"input_size": 224}}, device="cpu")
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{path} ({role}): not a SlowFast R50 checkpoint ({type(exc).__name__}: {_first_line(exc)}); "
                        "delete it and run again") from None


def fetch(models: dict, to: str | Path | None = None, revisions: dict[str, str] | None = None, verify: bool = True,
          api=None, hub_download=None, url_download=None) -> tuple[list[dict], list[str]]:
    """(what was fetched, one error line per role that failed); `models`: role -> `ModelSpec`."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise UserError("fetch-weights downloads: run it where there is internet, without HF_HUB_OFFLINE=1")
    to = Path(to).expanduser().resolve() if to is not None else None
    done, errors = [], []
    for item in plan(models, revisions):
        try:
            if item["kind"] == "hub":
                done.append(fetch_hub(item, to, verify, api, hub_download))
            elif item["kind"] == "torch_hub":
                done.append(fetch_torch_hub(item, to, verify, url_download))
            else:
                done.append(item)
        except UserError as exc:
            errors.append(str(exc))
    return done, errors


def lock_path(to: Path | None) -> Path:
    from huggingface_hub import constants

    return (Path(to) if to is not None else Path(constants.HF_HOME)) / LOCK_FILE


def instructions(done: list[dict], to: Path | None) -> list[str]:
    """What to set on the compute nodes: the models.<role>.source lines, and without --to the caches."""
    lines = []
    fetched = [d for d in done if d["kind"] in ("hub", "torch_hub")]
    if to is None and fetched:
        import torch
        from huggingface_hub import constants

        lines += ["# on the compute nodes (a shared folder; the workflow's jobs set HF_HUB_OFFLINE=1 themselves):",
                  f"export HF_HOME={constants.HF_HOME}", f"export TORCH_HOME={Path(torch.hub.get_dir()).parent}",
                  "# or point the config at the downloaded files (pins the commit):"]
    if fetched:
        lines.append("models:")
        lines += [f"  {d['role']}: {{source: {d['path']}}}" for d in fetched]
    for d in done:
        if d["kind"] not in ("hub", "torch_hub"):
            why = {"local": f"local: {d['source']}", "packaged": "installed with the package (scripts/install.sh)",
                   "random": "built at random init (nothing to fetch)", "none": "no weights (nothing to fetch)"}
            lines.append(f"# {d['role']}: {why[d['kind']]}")
    return lines


def preset_models(preset: str) -> dict:
    """The resolved models (role -> `ModelSpec`) of a preset as it ships: a config of that preset alone."""
    if preset not in presets():
        raise UserError(f"unknown preset '{preset}' (presets: {', '.join(presets())})")
    alone = validate({"datasets": {"none": {"format": "generic", "labels": "none.csv"}}, "models": {"preset": preset}},
                     f"preset {preset}")
    return resolve.resolve(alone, validated=True).models


def parse_revisions(values: list[str]) -> dict[str, str]:
    out = {}
    for v in values or []:
        role, sep, rev = v.partition("=")
        if not sep or role not in ROLES or not rev:
            raise UserError(f"--revision {v!r}: expected ROLE=REVISION with ROLE one of {', '.join(ROLES)}")
        out[role] = rev
    return out


def configure_parser(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--preset", help="the models of this preset (e.g. paper)")
    which.add_argument("--config", help="the models of this workflow config (its preset and models.<role> overrides)")
    parser.add_argument("--to", default=None, metavar="DIR",
                        help="download into DIR (one folder per model) and print the models.<role>.source lines; "
                             "default: the Hugging Face and torch hub caches (HF_HOME, TORCH_HOME)")
    parser.add_argument("--revision", action="append", default=[], metavar="ROLE=REV",
                        help="hub commit, branch or tag of a role (default: the pinned commit, see lmmvqa-weights.json)")
    parser.add_argument("--no-verify", action="store_true", help="skip the size / sha256 / loading checks")
    add_no_progress_arg(parser)


def main(args) -> int:
    if args.no_progress:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    models = preset_models(args.preset) if args.preset else resolve.load(args.config).models
    to = Path(args.to).expanduser().resolve() if args.to else None
    done, errors = fetch(models, to, parse_revisions(args.revision), verify=not args.no_verify)
    for d in done:
        if d["kind"] in ("hub", "torch_hub"):
            rev = f" @ {d['revision']}" if d.get("revision") else ""
            print(f"{d['role']:<7} {d['source']}{rev} -> {d['path']} ({len(d['files'])} files; verified: {d['verified']})")
    fetched = [d for d in done if d["kind"] in ("hub", "torch_hub")]
    if fetched:
        lock = lock_path(to)
        atomic.write_text(lock, json.dumps(fetched, indent=2) + "\n")
        print(f"record: {lock}")
    print("\n".join(instructions(done, to)))
    for line in errors:
        print(f"lmmvqa fetch-weights: error: {line}", file=sys.stderr)
    return 2 if errors else 0
