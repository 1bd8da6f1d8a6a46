"""Choosing a setting without looking at the test folds: nested cross-validation of the answer head.

    .venv/bin/python benchmarks/bench_choose.py \\
        --candidate default=clive-dev \\
        --candidate native=clive-dev-native \\
        --candidate two-view=clive-dev:models.vision.whole_frame={arch: efficientnet_lite0} \\
        [--folds 0,1,2,3,4] [--seeds 0,1,2] [--inner-seeds 0] [--prior-weights 0,0.3,0.5] [--out FILE]

A candidate is NAME=SETUP[:KEY=VALUE;KEY=VALUE...]: a bench_head.py setup (its config, dataset and folds)
and `--set` overrides (YAML values). Per outer fold F:

* inner: every candidate's answer head is trained on all folds but F and one inner fold G and scored on G
  (fold F's videos are left out of everything: `bench_head.run_setup(..., drop_fold=F)`), for every G and
  each `--inner-seeds`; the candidate with the best mean inner probability-score SRCC is chosen;
* outer: every candidate is trained on all folds but F and scored on F (`--seeds`), so the table shows what
  each candidate gives on the reported folds beside what the choice made without them gives.

`--prior-weights`: a candidate trained with a quality prior (`training.quality_prior`) becomes one
candidate per blend weight w ("NAME w=W"), scored by (1 - w) x the answer head's expected score + w x the
prior's score of the same trained models (the prior draws no random numbers, so the head does not depend
on w): the blend weight is chosen on the inner folds like any other setting.

The ridge readout of each candidate's features is chosen the same way (its inner SRCC: the ridge of the
other inner folds, alpha by their own inner folds). All candidates of one run must use the same dataset
and folds. Prints the table and writes JSON (every inner and outer run).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_head  # noqa: E402


def parse_candidate(text: str) -> tuple[str, str, dict]:
    """"NAME=SETUP[:KEY=VALUE;KEY=VALUE]" -> (name, setup, overrides)."""
    name, sep, rest = text.partition("=")
    setup, _, sets = rest.partition(":")
    if not sep or setup not in bench_head.SETUPS:
        raise SystemExit(f"--candidate {text}: expected NAME=SETUP[:KEY=VALUE;...] with SETUP one of "
                         f"{', '.join(sorted(bench_head.SETUPS))}")
    return name, setup, bench_head.parse_sets([s for s in sets.split(";") if s])


def run_srcc(run: dict, weight: float | None) -> float:
    """A run's probability-score SRCC; with `weight`, that of its prior blend at that weight."""
    if weight is None:
        return run["prob_srcc"]
    if "prior_blend_srcc" not in run:
        raise SystemExit("--prior-weights: the candidate's models have no quality prior (training.quality_prior)")
    return run["prior_blend_srcc"][str(weight)]


def fold_scores(result: dict, weight: float | None = None) -> tuple[dict[int, float], dict[int, float]]:
    """(mean LMM prob SRCC per fold over seeds, ridge SRCC per fold) of one run_setup result; `weight`: the
    prior blend at that weight instead of the trained one."""
    lmm: dict[int, list[float]] = {}
    for r in result["runs"]:
        lmm.setdefault(int(r["fold"]), []).append(run_srcc(r, weight))
    return ({f: float(np.mean(v)) for f, v in lmm.items()},
            {int(f): r["srcc"] for f, r in result["ridge"].items()})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--candidate", action="append", required=True, metavar="NAME=SETUP[:KEY=VALUE;...]")
    ap.add_argument("--folds", default=None, help="outer folds (default: all of the setup's)")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds of the outer runs")
    ap.add_argument("--inner-seeds", default="0", help="training seeds of the inner runs (default 0)")
    ap.add_argument("--prior-weights", default=None,
                    help=f"choose the quality prior's blend weight too, among these (of {bench_head.PRIOR_WEIGHTS})")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "bench_choose.json"))
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    os.chdir(REPO)
    candidates = [parse_candidate(c) for c in args.candidate]
    datasets = {bench_head.SETUPS[setup][1] for _, setup, _ in candidates}
    if len(datasets) != 1:
        raise SystemExit(f"candidates on different datasets ({', '.join(sorted(datasets))}): one dataset per run")
    from pipeline.core.config import load_config

    first = load_config(bench_head.SETUPS[candidates[0][1]][0], candidates[0][2])
    k = first["datasets"][datasets.pop()]["split"]["k"]
    outer = list(range(k)) if args.folds is None else [int(v) for v in args.folds.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    inner_seeds = [int(v) for v in args.inner_seeds.split(",")]
    weights = [None] if args.prior_weights is None else [float(v) for v in args.prior_weights.split(",")]
    if any(w is not None and w not in bench_head.PRIOR_WEIGHTS for w in weights):
        raise SystemExit(f"--prior-weights: each one of {bench_head.PRIOR_WEIGHTS}")
    label = lambda name, w: name if w is None else f"{name} w={w:g}"  # noqa: E731
    log = lambda m: print(m, flush=True)  # noqa: E731
    doc = {"candidates": {label(n, w): {"setup": s, "overrides": o, "prior_weight": w}
                          for n, s, o in candidates for w in weights}, "folds": outer, "seeds": seeds,
           "inner_seeds": inner_seeds, "date": time.strftime("%Y-%m-%d %H:%M"),
           "commit": bench_head.source_commit(), "outer": {}}
    t0 = time.perf_counter()
    for f in outer:
        row = {"inner": {}, "outer": {}}
        for name, setup, overrides in candidates:
            inner = bench_head.run_setup(setup, overrides, None, inner_seeds, False, log, drop_fold=f)[0]
            out = bench_head.run_setup(setup, overrides, [f], seeds, False, log)[0]
            for w in weights:
                (lmm_in, ridge_in), (lmm_out, ridge_out) = fold_scores(inner, w), fold_scores(out, w)
                row["inner"][label(name, w)] = {"lmm": float(np.mean(list(lmm_in.values()))),
                                                "ridge": float(np.mean(list(ridge_in.values()))),
                                                "per_inner_fold": {"lmm": lmm_in, "ridge": ridge_in}}
                row["outer"][label(name, w)] = {"lmm": lmm_out[f], "ridge": ridge_out[f],
                                                "seeds": [run_srcc(r, w) for r in out["runs"]],
                                                "text": float(np.mean([r["text_srcc"] for r in out["runs"]]))}
        row["chosen"] = {kind: max(row["inner"], key=lambda n: row["inner"][n][kind]) for kind in ("lmm", "ridge")}
        row["chosen_outer"] = {kind: row["outer"][row["chosen"][kind]][kind] for kind in ("lmm", "ridge")}
        doc["outer"][str(f)] = row
        log(f"outer fold {f}: chosen {row['chosen']} -> {row['chosen_outer']}")
        doc["seconds"] = round(time.perf_counter() - t0, 1)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(table(doc))
    print(f"\n{doc['seconds']:.0f} s; -> {args.out}")
    return 0


def table(doc: dict) -> str:
    """Per outer fold: each candidate's inner and outer SRCC (LMM prob / ridge), and what was chosen."""
    names = list(doc["candidates"])
    head = ["outer fold", *[f"{n}: inner / outer LMM (ridge)" for n in names], "chosen LMM -> outer", "chosen ridge -> outer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for f, row in doc["outer"].items():
        cells = [f"{row['inner'][n]['lmm']:.3f} / {row['outer'][n]['lmm']:.3f} ({row['inner'][n]['ridge']:.3f} / "
                 f"{row['outer'][n]['ridge']:.3f})" for n in names]
        lines.append("| " + " | ".join([f, *cells, f"{row['chosen']['lmm']} -> {row['chosen_outer']['lmm']:.3f}",
                                         f"{row['chosen']['ridge']} -> {row['chosen_outer']['ridge']:.3f}"]) + " |")
    rows = doc["outer"].values()
    mean = [f"{np.mean([r['inner'][n]['lmm'] for r in rows]):.3f} / {np.mean([r['outer'][n]['lmm'] for r in rows]):.3f} "
            f"({np.mean([r['inner'][n]['ridge'] for r in rows]):.3f} / {np.mean([r['outer'][n]['ridge'] for r in rows]):.3f})"
            for n in names]
    lines.append("| " + " | ".join(["mean", *mean, f"{np.mean([r['chosen_outer']['lmm'] for r in rows]):.3f}",
                                     f"{np.mean([r['chosen_outer']['ridge'] for r in rows]):.3f}"]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
