"""The shipped model (models/lmmvqa-offline): rebuild its weights and check their hashes, then score the
real clips and a few clive-dev photos with it beside their human scores, in seconds per file.

    .venv/bin/python benchmarks/bench_shipped_model.py [--no-rebuild] [--keep-features] [--photos 6]

Rebuild: the repository's tracked and untracked-but-not-ignored files are copied into a temporary folder
with `shared` beside it (a link to the real ../shared, which config/shipped.yaml reads), and there
`snakemake results/models/shipped/all --cores 2 --configfile config/shipped.yaml` trains the shipped
experiment's model on every fold from scratch (manifests, feature extraction, prompts, tokenizer,
training); the sha256 of each of its weight files must equal the one the shipped folder records
(`lmmvqa.json` `shipped.weights_sha256`, also in its card). `--keep-features` copies this checkout's
manifests and feature stores (results/manifest, cache/features) into the copy first, so only prompts,
tokenizer and training are redone.

Scoring: `lmmvqa score --model models/lmmvqa-offline` as a user runs it, on the six real clips of
../shared/datasets/real-clips (human scores on their own datasets' scales) and `--photos` clive-dev photos
spread over the MOS range (they were in the model's training data: a sanity check, not a measurement).
Seconds per file are the `seconds` the command reports per file (decode + features + model, after loading).
Writes benchmarks/results/shipped_model.json. Not in the test suite (minutes; needs ../shared).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.evaluation.ship import SHIPPED_MODEL, weight_hashes  # noqa: E402

SHARED = REPO.parent / "shared"
BIN = Path(sys.executable).parent


def repo_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    return [f for f in out.splitlines() if (REPO / f).is_file()]


def rebuild(keep_features: bool) -> dict:
    """Train results/models/shipped/all in a fresh copy of the repository; its weight hashes and seconds."""
    with tempfile.TemporaryDirectory(prefix="shipped-rebuild-") as tmp:
        root = Path(tmp) / "repo"
        for f in repo_files():
            (root / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, root / f)
        (Path(tmp) / "shared").symlink_to(SHARED.resolve())
        if keep_features:  # the manifests and feature stores as they are (older first: nothing re-extracts)
            for folder in ("results/manifest", "cache/features"):
                shutil.copytree(REPO / folder, root / folder)
        t0 = time.perf_counter()
        proc = subprocess.run([str(BIN / "snakemake"), "results/models/shipped/all", "--cores", "2",
                               "--configfile", "config/shipped.yaml"], cwd=root, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(root)})
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"rebuild failed:\n{proc.stderr[-3000:]}")
        return {"seconds": round(seconds, 1), "weights_sha256": weight_hashes(root / "results/models/shipped/all"),
                "keep_features": keep_features}


def score(files: list[Path]) -> list[dict]:
    proc = subprocess.run([str(BIN / "lmmvqa"), "score", "--model", str(SHIPPED_MODEL), *map(str, files)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        sys.exit(f"lmmvqa score failed:\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-rebuild", action="store_true", help="only score (skip the rebuild and hash check)")
    ap.add_argument("--keep-features", action="store_true", help="rebuild from this checkout's feature cache")
    ap.add_argument("--photos", type=int, default=6, help="clive-dev photos to score (spread over the MOS range)")
    args = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} not found: the rebuild and the real clips need it")
    record = json.loads((SHIPPED_MODEL / "lmmvqa.json").read_text())["shipped"]
    result = {"date": time.strftime("%Y-%m-%d"), "host": platform.node(), "python": platform.python_version(),
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                       text=True).stdout.strip()}
    ok = True
    if not args.no_rebuild:
        result["rebuild"] = rebuild(args.keep_features)
        same = result["rebuild"]["weights_sha256"] == record["weights_sha256"]
        ok &= same
        print(f"rebuild ({'from the feature cache' if args.keep_features else 'from scratch'}) in "
              f"{result['rebuild']['seconds']:.0f} s: weights {'IDENTICAL to' if same else 'DIFFER from'} the shipped ones")
        for name, digest in result["rebuild"]["weights_sha256"].items():
            mark = "ok" if record["weights_sha256"].get(name) == digest else f"shipped {record['weights_sha256'].get(name)}"
            print(f"  {name}: {digest} ({mark})")
    clips = pd.read_csv(SHARED / "datasets/real-clips/labels.csv")
    photos = pd.read_csv(SHARED / "datasets/clive-dev/labels.csv").sort_values("mos").reset_index(drop=True)
    picked = photos.iloc[[round(i * (len(photos) - 1) / max(1, args.photos - 1)) for i in range(args.photos)]]
    files = ([SHARED / "datasets/real-clips" / n for n in clips["name"]]
             + [SHARED / "datasets/clive-dev/images" / n for n in picked["name"]])
    human = ([f"{r.mos:.2f} ({r.dataset}, {r.mos_scale.split(' ')[0]})" for r in clips.itertuples()]
             + [f"{r.mos:.2f} (CLIVE, 0-100; in training)" for r in picked.itertuples()])
    t0 = time.perf_counter()
    lines = score(files)
    wall = time.perf_counter() - t0
    rows = [{"file": Path(x["video"]).name, "media": x.get("media"), "human": h, "prob_score": x.get("prob_score"),
             "score": x.get("score"), "level": x.get("level"), "seconds": x.get("seconds"), "error": x.get("error")}
            for x, h in zip(lines, human)]
    result.update(scores=rows, score_wall_s=round(wall, 1))
    print(f"\n| file | media | human score | prob_score | level | s/file |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['file']} | {r['media']} | {r['human']} | {r['prob_score']} | {r['level']} | {r['seconds']} |")
    print(f"\nlmmvqa score, {len(files)} files: {wall:.1f} s wall in all (model loading included)")
    out = REPO / "benchmarks/results/shipped_model.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
