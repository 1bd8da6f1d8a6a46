"""Cost of building a synth dataset per variant, against plain ffmpeg doing the same encodes and VMAF runs.

Ours: the stage's commands as the workflow runs them (`lmmvqa synth-plan`, `synth-segments` per reference,
`synth-variants` per shard with 2 variants at once, `synth-labels`), timed as a whole and the variant jobs
alone, in wall time and in CPU time (every child process's, so other work on the machine does not count).
Plain: for the same variants (the same segments, filters and encoder settings, taken from our plan),
one `ffmpeg` encode and one `ffmpeg -lavfi libvmaf` run each (VMAF only, after the same frame-rate and size
conversion), 2 variants at once. The two run alternately, `--repeats` times; the best of each is compared.

    .venv/bin/python benchmarks/bench_synth.py [--references N] [--repeats R]

References: the first N of realset-dev's `hq` videos (config/synth-dev/realset-dev-hq.csv, one per source
first), the ladder of config/synth-dev.yaml. Prints a table and writes benchmarks/results/bench_synth.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.synth import distortions as D  # noqa: E402
from pipeline.synth import ffmpeg  # noqa: E402
from pipeline.synth.plan import read_plan, segment_of  # noqa: E402

REALSET = ROOT.parent / "shared" / "datasets" / "realset-dev"
LMMVQA = Path(sys.executable).parent / "lmmvqa"


def references(n: int) -> pd.DataFrame:
    hq = pd.read_csv(ROOT / "config" / "synth-dev" / "realset-dev-hq.csv")
    first = hq.drop_duplicates("source")
    return pd.concat([first, hq.drop(first.index)]).head(n)


def config(work: Path, listing: Path) -> Path:
    ladder = yaml.safe_load((ROOT / "config" / "synth-dev.yaml").read_text())["datasets"]["synth-real"]["synth"]
    cfg = {"datasets": {"syn": {"format": "synth", "references": str(REALSET / "videos"),
                                "reference_labels": str(listing), "synth": {**ladder, "shard_size": 17}}}}
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    # the commands read the validated config with every default, as the workflow hands it to them
    from pipeline.core.config import load_config
    resolved = work / "config.resolved.yaml"
    resolved.write_text(yaml.safe_dump(load_config(path)))
    return resolved


def children_cpu() -> float:
    """CPU seconds of every finished child process (and theirs: lmmvqa's ffmpeg runs) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def lmmvqa(*args) -> None:
    subprocess.run([str(LMMVQA), *map(str, args)], check=True, capture_output=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def ours(work: Path, cfg: Path) -> dict:
    out = work / "ours"
    shutil.rmtree(out, ignore_errors=True)
    t0, c0 = time.perf_counter(), children_cpu()
    lmmvqa("synth-plan", "--config", cfg, "--dataset", "syn", "--out", out / "plan.csv", "--failures", out / "pf.csv")
    plan = read_plan(out / "plan.csv")
    for ref in plan["reference"].unique():
        lmmvqa("synth-segments", "--config", cfg, "--dataset", "syn", "--plan", out / "plan.csv", "--reference", ref,
               "--out", out / "segments" / ref)
    t1, c1 = time.perf_counter(), children_cpu()
    shards = []
    for (ref, shard), _ in plan.groupby(["reference", "shard"]):
        shards.append(out / "variants" / ref / f"shard-{shard:05d}")
        lmmvqa("synth-variants", "--plan", out / "plan.csv", "--reference", ref, "--shard", shard,
               "--segments", out / "segments" / ref, "--out", shards[-1], "--threads", 2)
    t2, c2 = time.perf_counter(), children_cpu()
    lmmvqa("synth-labels", "--config", cfg, "--dataset", "syn", "--plan", out / "plan.csv", "--plan-failures",
           out / "pf.csv", "--segments", *[out / "segments" / r for r in plan["reference"].unique()],
           "--shards", *shards, "--labels", out / "labels.csv", "--failures", out / "failures.csv",
           "--videos", out / "videos")
    t3, c3 = time.perf_counter(), children_cpu()
    return {"variants": len(plan), "stage_s": t3 - t0, "variant_jobs_s": t2 - t1, "plan_and_cut_s": t1 - t0,
            "labels_s": t3 - t2, "stage_cpu_s": c3 - c0, "variant_jobs_cpu_s": c2 - c1}


def plain_one(row: dict, segments: Path, out: Path) -> None:
    """What one would type: an ffmpeg encode of the variant, then an ffmpeg libvmaf run against the segment."""
    seg = segments / row["reference"] / f"seg-{row['segment']}.mkv"
    rate = Fraction(row["rate"])
    r = f"{rate.numerator}/{rate.denominator}"
    recipe = D.recipe(row["family"], json.loads(row["params"]), segment_of(row), int(row["seed"]))
    target = out / row["name"]
    vf = ["-vf", ",".join(recipe.filters)] if recipe.filters else []
    ffmpeg.run(["-r", r, "-i", seg, *vf, "-an", *D.encoder_args(recipe.codec, recipe.crf), target])
    graph = (f"[0:v]setpts=PTS-STARTPTS,fps={r},scale={row['width']}:{row['height']}:flags=bicubic,format=yuv420p[d];"
             f"[1:v]setpts=PTS-STARTPTS,format=yuv420p[r];[d][r]libvmaf=n_threads=1")
    ffmpeg.run(["-i", target, "-r", r, "-i", seg, "-lavfi", graph, "-f", "null", "-"])


def plain(work: Path) -> dict:
    plan = read_plan(work / "ours" / "plan.csv")
    out = work / "plain"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    t0, c0 = time.perf_counter(), children_cpu()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda r: plain_one(r, work / "ours" / "segments", out), plan.to_dict("records")))
    return {"variants": len(plan), "encode_vmaf_s": time.perf_counter() - t0, "encode_vmaf_cpu_s": children_cpu() - c0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--references", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_synth.json"))
    args = ap.parse_args()
    if not REALSET.is_dir():
        print(f"realset-dev not found at {REALSET}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="bench-synth-") as tmp:
        work = Path(tmp)
        listing = work / "refs.csv"
        references(args.references).to_csv(listing, index=False)
        cfg = config(work, listing)
        runs = {"ours": [], "plain": []}
        for _ in range(args.repeats):
            runs["ours"].append(ours(work, cfg))
            runs["plain"].append(plain(work))
        labels = pd.read_csv(work / "ours" / "labels.csv")
    n = runs["ours"][0]["variants"]
    best = {"stage_s": min(r["stage_s"] for r in runs["ours"]),
            "variant_jobs_s": min(r["variant_jobs_s"] for r in runs["ours"]),
            "encode_vmaf_s": min(r["encode_vmaf_s"] for r in runs["plain"])}
    cpu = {"stage_cpu_s": min(r["stage_cpu_s"] for r in runs["ours"]),
           "variant_jobs_cpu_s": min(r["variant_jobs_cpu_s"] for r in runs["ours"]),
           "encode_vmaf_cpu_s": min(r["encode_vmaf_cpu_s"] for r in runs["plain"])}
    result = {"references": args.references, "variants": n, "repeats": args.repeats, "runs": runs, "best": best,
              "best_cpu": cpu, "per_variant_s": {k: v / n for k, v in {**best, **cpu}.items()},
              "ratio_stage": best["stage_s"] / best["encode_vmaf_s"],
              "ratio_variant_jobs": best["variant_jobs_s"] / best["encode_vmaf_s"],
              "ratio_stage_cpu": cpu["stage_cpu_s"] / cpu["encode_vmaf_cpu_s"],
              "ratio_variant_jobs_cpu": cpu["variant_jobs_cpu_s"] / cpu["encode_vmaf_cpu_s"],
              "sizes": sorted({f"{w}x{h}" for w, h in zip(labels["width"], labels["height"])}),
              "load_average": os.getloadavg()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"{args.references} references, {n} variants, best of {args.repeats}; load average now "
          f"{result['load_average'][0]:.1f}")
    print("| build | wall s | s per variant | x plain | CPU s | CPU s per variant | x plain |")
    print("|---|---|---|---|---|---|---|")
    rows = [("plain ffmpeg: encode + libvmaf (VMAF only), 2 at once", "encode_vmaf_s", "encode_vmaf_cpu_s"),
            ("ours: synth-variants jobs (encode + VMAF, PSNR, SSIM)", "variant_jobs_s", "variant_jobs_cpu_s"),
            ("ours: the whole stage (plan, cut, variants, labels)", "stage_s", "stage_cpu_s")]
    for what, wall, used in rows:
        print(f"| {what} | {best[wall]:.1f} | {best[wall] / n:.2f} | {best[wall] / best['encode_vmaf_s']:.2f} | "
              f"{cpu[used]:.1f} | {cpu[used] / n:.2f} | {cpu[used] / cpu['encode_vmaf_cpu_s']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
