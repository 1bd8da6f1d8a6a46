"""Free and constrained greedy and mbr text answers, side by side, on one trained model.

    .venv/bin/python benchmarks/bench_decoding.py [--workdir .] [--experiment demo] [--dataset demo]

Uses a workflow's outputs in --workdir (the model folder `results/models/<experiment>`, the resolved
config `results/config.resolved.yaml`, the prompt shards and feature stores of the experiment's test
datasets): run `snakemake --cores 2` there first. When the model folder is absent, it runs the
workflow on the 10-video test config (tests/test_workflow.py `MINI`, with `--max-steps` training
steps) in a temporary folder and uses that model instead.

Each test dataset is evaluated through `pipeline.evaluation.evaluate.evaluate` once per
`evaluation.decoding` (free, constrained, mbr); everything else is the workflow's config. Prints, per
decoding, the text method's n / SRCC / PLCC / KRCC / RMSE, the invalid answers, level accuracy and
invalid level answers (the probability score, which does not depend on decoding, for reference),
then answers side by side; writes benchmarks/results/decoding.json (predictions of every run under
benchmarks/results/decoding/).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DECODINGS = ("free", "constrained", "mbr")


def build_mini_demo(max_steps: int) -> Path:
    """The workflow on the 10-video test config in a temporary folder -> that folder."""
    import yaml

    sys.path.insert(0, str(REPO / "tests"))
    from test_workflow import MINI

    work = Path(tempfile.mkdtemp(prefix="bench_decoding-"))
    cfg = copy.deepcopy(MINI)
    cfg["training"]["max_steps"] = max_steps
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
           "--configfile", str(work / "config.yaml"), "--cores", "2", "--quiet"]
    print(f"no trained model given: running the 10-video workflow ({max_steps} training steps) in {work}", flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return work


def text_summary(metrics: dict) -> dict:
    text, level = metrics["methods"]["text"], metrics.get("level") or {}
    return {"n": metrics["n"], "invalid": metrics["invalid"],
            **{k: text.get(k) for k in ("srcc", "plcc", "krcc", "rmse", "note")},
            "level_accuracy": level.get("accuracy"), "level_invalid": level.get("invalid"),
            "prob": {k: metrics["methods"]["prob"].get(k) for k in ("srcc", "plcc")}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default=".", help="workflow folder holding results/ and cache/ (default: .)")
    ap.add_argument("--config", default=None, help="config (default: WORKDIR/results/config.resolved.yaml)")
    ap.add_argument("--experiment", default="demo")
    ap.add_argument("--dataset", action="append", default=None, help="test dataset(s) (default: all of the experiment's)")
    ap.add_argument("--device", default=None, help="cpu, cuda, ... (default: the config's)")
    ap.add_argument("--max-steps", type=int, default=60, help="training steps of the fallback 10-video model")
    ap.add_argument("--examples", type=int, default=12, help="answers shown side by side")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "decoding.json"))
    args = ap.parse_args()
    torch_threads = int(os.environ.get("OMP_NUM_THREADS", "2"))

    import pandas as pd
    import torch

    from pipeline.core import paths
    from pipeline.core.config import load_config
    from pipeline.evaluation.evaluate import evaluate
    from pipeline.prompts.selectors import parse_selector

    torch.set_num_threads(torch_threads)
    out_json = Path(args.out).resolve()
    pred_root = out_json.with_suffix("")
    work = Path(args.workdir).resolve()
    experiment = args.experiment
    if not (work / paths.model_dir(experiment) / "lmmvqa.json").exists():
        if args.config:
            sys.exit(f"{work / paths.model_dir(experiment)}: no trained model; run the workflow first")
        work, experiment = build_mini_demo(args.max_steps), "demo"
    config = Path(args.config).resolve() if args.config else work / "results" / "config.resolved.yaml"
    os.chdir(work)
    cfg = load_config(config)
    device = args.device or cfg["device"]
    datasets = args.dataset or sorted({parse_selector(s)[0] for s in cfg["experiments"][experiment]["test"]})

    result = {"workdir": str(work), "experiment": experiment, "config": str(config), "device": device,
              "max_new_tokens": cfg["evaluation"]["max_new_tokens"],
              "templates_per_video": cfg["evaluation"]["templates_per_video"], "datasets": {}}
    for dataset in datasets:
        entry, preds = {}, {}
        for decoding in DECODINGS:
            run = copy.deepcopy(cfg)
            run["evaluation"]["decoding"] = decoding
            out = pred_root / experiment / dataset / decoding / "predictions.csv"
            t0 = time.perf_counter()
            metrics = evaluate(run, experiment, dataset, out, device=device)
            entry[decoding] = {**text_summary(metrics), "seconds": round(time.perf_counter() - t0, 1)}
            preds[decoding] = pd.read_csv(out, dtype={"id": str}, keep_default_na=False)
        both = preds["free"][["id", "mos", "text", "level_true", "level_text"]].merge(
            preds["constrained"][["id", "text", "level_text"]], on="id", suffixes=("_free", "_constrained"))
        entry["changed_score_answers"] = int((both["text_free"] != both["text_constrained"]).sum())
        entry["changed_level_answers"] = int((both["level_text_free"] != both["level_text_constrained"]).sum())
        entry["examples"] = both.head(args.examples).to_dict(orient="records")
        result["datasets"][dataset] = entry

        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"\n{experiment} / {dataset} (text method; prob score for reference)")
        print(f"{'decoding':<12} {'n':>4} {'invalid':>7} {'SRCC':>7} {'PLCC':>7} {'KRCC':>7} {'RMSE':>7} "
              f"{'level acc':>9} {'lvl inv':>7} {'prob SRCC':>9} {'s':>6}")
        for decoding in DECODINGS:
            r = entry[decoding]
            print(f"{decoding:<12} {r['n']:>4} {r['invalid']:>7} {fmt(r['srcc']):>7} {fmt(r['plcc']):>7} "
                  f"{fmt(r['krcc']):>7} {fmt(r['rmse']):>7} {fmt(r['level_accuracy']):>9} "
                  f"{str(r['level_invalid']):>7} {fmt(r['prob']['srcc']):>9} {r['seconds']:>6}")
        print(f"answers changed by the constraint: {entry['changed_score_answers']} score, "
              f"{entry['changed_level_answers']} level, of {len(both)}")
        print(f"{'id':<16} {'mos':>7}  {'free':<28} {'constrained':<14} {'level free':<14} level constrained")
        for ex in entry["examples"]:
            print(f"{str(ex['id'])[:16]:<16} {float(ex['mos']):>7.2f}  {str(ex['text_free'])[:28]:<28} "
                  f"{str(ex['text_constrained'])[:14]:<14} {str(ex['level_text_free'])[:14]:<14} "
                  f"{ex['level_text_constrained']}")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\n-> {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
