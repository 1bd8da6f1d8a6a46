"""GPU proof run: paper-SHAPED models at random init through the real workflow, one JSON of figures.

    bash benchmarks/gpu_check.sh                    # one GPU (--device cuda), paper shapes, <= ~8 min
    bash benchmarks/gpu_check.sh --small            # CPU, the tiny preset as is (the test suite runs this)

Nothing is downloaded: the models are the `tiny` preset with `models.<role>.config` overrides giving the
paper's shapes (CLIP ViT-L/14, SlowFast R50, a Llama-3-8B-shaped LLM in bfloat16), built at random init.
The script generates demo videos, writes a config with one experiment that follows the paper recipe of
config/paper-lsvq.yaml (its stage 1: projector, LLM frozen; its stage 2: LoRA continuing from stage 1; the
same learning rates and LoRA settings, fewer steps) and tests on two selectors of one dataset, each
evaluated on its own (`demo:test`, the held-out fold, and `demo:train`, a second selector whose figures
are on training videos: it checks that selectors stay apart, not accuracy). It runs the real Snakemake
workflow (demo-data, manifest, probe, extract, prompts, tokenizer, train_stage1, train, evaluate x 2,
report), then `lmmvqa score` on one video. `lmmvqa plan`'s memory estimate of each stage is printed
beside the measured peak.

Every `lmmvqa` command the workflow runs goes through a shim first on PATH (`gpu_check.py _measure`), which
runs the command in-process (pipeline.cli.main) and records its wall time and peak memory
(torch.cuda.max_memory_allocated when CUDA was used, and the process's peak RSS). The figures come from
those records and from what the commands write: the feature store's timings (decode_wait_s, total_s, ...),
the model folders' train_summary / train_log.csv / init_from, the metrics JSON and the score lines.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "gpucheck"
TESTS = ("demo:test", "demo:train")  # two selectors of one dataset, evaluated apart
PAPER_CONFIG = REPO / "config" / "paper-lsvq.yaml"

# Paper shapes (the `paper` preset's models), built at random init from the `tiny` preset.
PAPER_SHAPES = {
    "vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
               "patch_size": 14, "image_size": 224, "projection_dim": 768},
    "motion": {"model_depth": 50, "stem_dim_out": 64, "input_size": 224},
    "llm": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "max_position_embeddings": 8192},
}


# ------------------------------------------------------------------ the measuring shim

def measure(log: str, argv: list[str]) -> int:
    """Run `lmmvqa ARGV` in this process; append {command, argv, rc, wall_s, peak memory} to LOG."""
    from pipeline.cli import main

    t0 = time.perf_counter()
    rc = 1
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    finally:
        record = {"command": next((a for a in argv if not a.startswith("-")), None), "argv": argv, "rc": rc,
                  "wall_s": round(time.perf_counter() - t0, 3),
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "peak_gpu_bytes": None}
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            record["peak_gpu_bytes"] = max(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count()))
            record["gpu_name"] = torch.cuda.get_device_name(0)
        with open(log, "a") as fh:
            fh.write(json.dumps(record) + "\n")
    return rc


def write_shim(bin_dir: Path, log: Path) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "lmmvqa"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" _measure "{log}" "$@"\n')
    shim.chmod(0o755)


# ------------------------------------------------------------------ the run

def paper_recipe() -> tuple[dict, dict, dict]:
    """(top-level training keys, stage 1 overrides, stage 2 overrides) of config/paper-lsvq.yaml's experiment."""
    import yaml

    paper = yaml.safe_load(PAPER_CONFIG.read_text())
    exp = next(iter(paper["experiments"].values()))
    keep = ("weight_decay", "warmup_ratio", "max_grad_norm", "lora", "gradient_checkpointing", "grad_accum")
    return {k: v for k, v in paper["training"].items() if k in keep}, dict(exp["stage1"]), dict(exp["training"])


def make_config(args) -> dict:
    small = args.small
    models = {"preset": "tiny"}
    if not small:
        models.update({role: {"config": dict(cfg)} for role, cfg in PAPER_SHAPES.items()})
        if args.llm_layers:
            models["llm"]["config"]["num_hidden_layers"] = args.llm_layers
        models["llm"]["dtype"] = "bfloat16"
    on_cuda = args.device.startswith("cuda")
    recipe, stage1, stage2 = paper_recipe()
    return {
        "datasets": {"demo": {"format": "generic", "labels": "resources/demo/labels.csv",
                              "videos": "resources/demo/videos", "generate": {"n_videos": args.videos, "seed": 0},
                              "split": {"scheme": "kfold", "k": 2, "seed": 0}}},
        "sampling": {"max_keyframes": 2, "max_seconds": 2} if small else {},
        "models": models,
        "features": {"shard_size": max(args.videos, 1), "batch_size": 16, "decode_workers": args.decode_workers},
        "training": {**recipe, "batch_size": args.batch_size, "val_fraction": 0.1, "checkpoint_every": 1000,
                     "train_llm": False, "dtype": "bfloat16" if on_cuda else None},
        "evaluation": {"bootstrap": 20, "batch_size": 4 if small else 16},
        "experiments": {EXPERIMENT: {
            "train": ["demo:train"], "test": list(TESTS), "holdout_fold": 0,
            "stage1": {**stage1, "epochs": 1, "max_steps": args.stage1_steps},
            "training": {**stage2, "epochs": 1, "max_steps": args.stage2_steps},
        }},
        "device": args.device,
        "threads": 0,
    }


def run_workflow(work: Path, env: dict, args) -> None:
    # everything: demo-data .. extract, prompts, tokenizer, train_stage1, train, evaluate per selector, report
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
           "--configfile", str(work / "config.yaml"), "--cores", str(args.cores)]
    if args.device.startswith("cuda"):
        cmd += ["--resources", "gpu=1"]  # one GPU job at a time: the figures are per job
    with open(work / "snakemake.log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
    if proc.returncode != 0:
        tail = (work / "snakemake.log").read_text()[-3000:]
        logs = sorted((work / "results" / "logs").rglob("*.log")) if (work / "results" / "logs").exists() else []
        for p in logs:
            text = p.read_text()
            if "Error" in text or "error" in text:
                tail += f"\n--- {p.relative_to(work)}\n{text[-2000:]}"
        raise SystemExit(f"gpu_check: the workflow failed (rc {proc.returncode}) in {work}:\n{tail}")


def read_records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []


def peak(rec: dict) -> dict:
    return {"peak_gpu_gib": None if rec.get("peak_gpu_bytes") is None else round(rec["peak_gpu_bytes"] / 2**30, 3),
            "peak_rss_gib": round(rec["peak_rss_bytes"] / 2**30, 3)}


def training_figures(work: Path, run: str, rec: dict) -> dict:
    folder = work / "results" / "models" / run
    meta = json.loads((folder / "lmmvqa.json").read_text())
    summary = meta["train_summary"]
    rows = list(csv.DictReader(open(folder / "train_log.csv")))
    bs = int(rec["batch_size"])
    per_step = [bs * summary["world_size"] / float(r["samples_per_s"]) for r in rows if float(r["samples_per_s"]) > 0]
    steady = per_step[1:] or per_step  # the first step includes warm-up (allocation, kernels)
    return {
        "model": str(folder.relative_to(work)), "steps": summary["steps"], "batch_size": bs,
        "dtype": summary["dtype"], "device": summary["device"], "trainable_params": summary["trainable"],
        "total_params": summary["total"], "lora": bool(meta.get("lora")),
        "train_loop_s": round(summary["seconds"], 3),
        "s_per_step_first": round(per_step[0], 4) if per_step else None,
        "s_per_step_median": round(statistics.median(steady), 4) if steady else None,
        "lr": meta["training"]["lr"], "llm_lr": meta["training"]["llm_lr"],
        "final_loss": summary["final_loss"], "job_wall_s": rec["wall_s"], **peak(rec),
        "init_from": meta.get("init_from"),
    }


def main_run(args) -> dict:
    from pipeline.model.model_files import file_digest

    if not args.small and not args.device.startswith("cuda"):
        print("gpu_check: note: paper shapes on CPU are very slow; use --small for a CPU run", file=sys.stderr)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gpu_check-"))
    if work.exists() and any(work.iterdir()):
        if not (work / ".gpu_check").exists():
            raise SystemExit(f"gpu_check: --workdir {work} is not empty and not an earlier gpu_check folder")
        shutil.rmtree(work)  # an earlier run's folder: start afresh
    work.mkdir(parents=True, exist_ok=True)
    (work / ".gpu_check").write_text("work folder of benchmarks/gpu_check.py (emptied by its next run)\n")
    import yaml

    cfg = make_config(args)
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    log = work / "measure.jsonl"
    log.unlink(missing_ok=True)
    write_shim(work / "bin", log)
    env = dict(os.environ, PATH=f"{work / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))

    t0 = time.perf_counter()
    run_workflow(work, env, args)
    workflow_s = time.perf_counter() - t0

    # one video of the test set through `lmmvqa score`
    manifest = list(csv.DictReader(open(work / "results" / "manifest" / "demo.csv")))
    video = work / "resources" / "demo" / "videos" / manifest[0]["path"]
    score_out = work / "results" / "score.jsonl"
    proc = subprocess.run(["lmmvqa", "score", str(video), "--model", str(work / "results" / "models" / EXPERIMENT),
                           "--device", args.device, "--out", str(score_out)], env=env, cwd=work,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"gpu_check: lmmvqa score failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")

    records = read_records(log)
    failed = [r for r in records if r["rc"] != 0]
    if failed:
        raise SystemExit(f"gpu_check: commands failed: {failed}")

    def one(command: str, pred=lambda r: True) -> dict:
        found = [r for r in records if r["command"] == command and pred(r)]
        if not found:
            raise SystemExit(f"gpu_check: no `lmmvqa {command}` record in {log}")
        return found[-1]

    # extraction: every shard's store timings
    extract_recs = [r for r in records if r["command"] == "extract"]
    stores = [r["argv"][r["argv"].index("--out") + 1] for r in extract_recs]
    import zarr

    timings = [dict(zarr.open_group(str(work / s), mode="r").attrs["timings"]) for s in stores]
    n_videos = sum(len(zarr.open_group(str(work / s), mode="r").attrs["ids"]) for s in stores)
    total_s = sum(t["total_s"] for t in timings)
    wait_s = sum(t["decode_wait_s"] for t in timings)
    encode_s = sum(t["vision_s"] + t["motion_s"] for t in timings)
    extraction = {
        "shards": len(stores), "videos": n_videos, "total_s": round(total_s, 3),
        "videos_per_s": round(n_videos / total_s, 4) if total_s else None,
        # without the model build (random init of the encoders): the steady rate of a long extraction
        "videos_per_s_loop": round(n_videos / max(total_s - sum(t["load_s"] for t in timings), 1e-9), 4),
        "load_s": round(sum(t["load_s"] for t in timings), 3), "decode_wait_s": round(wait_s, 3),
        "decode_s": round(sum(t["decode_s"] for t in timings), 3),
        "encode_s": round(encode_s, 3), "write_s": round(sum(t["write_s"] for t in timings), 3),
        "decode_workers": timings[0].get("decode_workers") if timings else None,
        # share of the loop the encoders waited for decoded videos (load excluded) / spent encoding
        "decode_wait_fraction": round(wait_s / max(total_s - sum(t["load_s"] for t in timings), 1e-9), 4),
        "encoder_busy_fraction": round(encode_s / max(total_s - sum(t["load_s"] for t in timings), 1e-9), 4),
        "decode_bound": wait_s > encode_s,
        "job_wall_s": round(sum(r["wall_s"] for r in extract_recs), 3),
        **peak(max(extract_recs, key=lambda r: (r.get("peak_gpu_bytes") or 0, r["peak_rss_bytes"]))),
    }

    train_recs = [r for r in records if r["command"] in ("launch", "train")]
    s1_rec = next(r for r in train_recs if "--stage1" in r["argv"])
    s2_rec = next(r for r in train_recs if "--stage1" not in r["argv"])
    for r in (s1_rec, s2_rec):
        r["batch_size"] = args.batch_size
    stage1 = training_figures(work, f"{EXPERIMENT}.stage1", s1_rec)
    stage2 = training_figures(work, EXPERIMENT, s2_rec)
    s1_projector = file_digest(work / "results" / "models" / f"{EXPERIMENT}.stage1" / "projector.safetensors")
    stage2["continued_from_stage1"] = bool(stage2["init_from"]) and stage2["init_from"]["projector_sha1"] == s1_projector

    from pipeline.core import paths

    evaluation = {}
    for test in TESTS:
        ev_rec = one("evaluate", lambda r, t=test: t in r["argv"])
        metrics = json.loads((work / paths.metrics(EXPERIMENT, test)).read_text())
        evaluation[test] = {"job_wall_s": ev_rec["wall_s"], **peak(ev_rec), "n": metrics.get("n"),
                            "test": metrics.get("test"),
                            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                            "prob_srcc": metrics["methods"]["prob"]["srcc"]}
    report = work / paths.report()
    html = report.read_text() if report.exists() else ""
    report_sections = [t for t in TESTS if f'<tr data-test="{t}">' in html]
    estimates = plan_estimates(work, cfg)
    for name, fig in (("stage1", stage1), ("stage2", stage2)):
        fig["plan_estimate_gib"] = estimates[name]
    evaluation_plan = estimates["evaluation"]

    sc_rec = one("score")
    lines = [json.loads(line) for line in score_out.read_text().splitlines() if line.strip()]
    score = {"video": str(video.relative_to(work)), "job_wall_s": sc_rec["wall_s"], **peak(sc_rec), "lines": lines}

    gpu_name = next((r["gpu_name"] for r in records if r.get("gpu_name")), None)
    return {
        "mode": "small" if args.small else "paper-shaped", "device": args.device, "gpu": gpu_name,
        "models": cfg["models"], "videos": args.videos, "workdir": str(work),
        "workflow_s": round(workflow_s, 3),
        "extraction": extraction, "stage1": stage1, "stage2": stage2, "evaluation": evaluation,
        "evaluation_plan_estimate_gib": evaluation_plan, "report_sections": report_sections, "score": score,
        "commands": [{k: r[k] for k in ("command", "wall_s", "rc")} | peak(r) for r in records],
    }


def plan_estimates(work: Path, cfg: dict) -> dict:
    """`lmmvqa plan`'s GPU memory estimate (GiB) of each stage of this run's config, for the table's
    comparison with the measured peaks (the same sequence length as the run: counted with its tokenizer)."""
    import os as _os

    from pipeline.core import resolve
    from pipeline.plan import plan

    here = Path.cwd()
    _os.chdir(work)  # the run's tokenizer and manifests
    try:
        p = plan(resolve.resolve(json.loads(json.dumps(cfg)), source="gpu_check"))
    finally:
        _os.chdir(here)
    runs = {t["stage"]: t for t in p["training"] if t["configured"]}
    gib = lambda b: round(b / 2**30, 3)  # noqa: E731
    return {"stage1": gib(runs[1]["total"]), "stage2": gib(runs[2]["total"]), "evaluation": gib(p["evaluation"]["total"]),
            "extraction": gib(p["extraction"]["total"])}


def table(res: dict) -> str:
    def fmt(v):
        return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    ex, s1, s2, sc = res["extraction"], res["stage1"], res["stage2"], res["score"]
    rows = [
        ("extraction", f"{ex['videos']} videos, {fmt(ex['videos_per_s_loop'])} videos/s (model build excluded), decode wait "
                       f"{fmt(ex['decode_wait_fraction'])} / encode {fmt(ex['encoder_busy_fraction'])} of the loop, "
                       f"decode-bound: {ex['decode_bound']}", ex["job_wall_s"], ex["peak_gpu_gib"], ex["peak_rss_gib"]),
        ("stage 1", f"{s1['steps']} steps x batch {s1['batch_size']} ({s1['dtype']}), {fmt(s1['s_per_step_median'])} s/step, "
                    f"plan {fmt(s1['plan_estimate_gib'])} GiB", s1["job_wall_s"], s1["peak_gpu_gib"], s1["peak_rss_gib"]),
        ("stage 2 (LoRA)", f"{s2['steps']} steps x batch {s2['batch_size']}, {fmt(s2['s_per_step_median'])} s/step, "
                           f"from stage 1: {s2['continued_from_stage1']}, plan {fmt(s2['plan_estimate_gib'])} GiB",
         s2["job_wall_s"], s2["peak_gpu_gib"], s2["peak_rss_gib"]),
        *((f"evaluate {t}", f"{ev['n']} videos, prob SRCC {fmt(ev['prob_srcc'])}, plan "
                            f"{fmt(res['evaluation_plan_estimate_gib'])} GiB",
           ev["job_wall_s"], ev["peak_gpu_gib"], ev["peak_rss_gib"]) for t, ev in res["evaluation"].items()),
        ("score", "; ".join(f"score {line.get('score')} level {line.get('level')}" for line in sc["lines"]),
         sc["job_wall_s"], sc["peak_gpu_gib"], sc["peak_rss_gib"]),
    ]
    out = [f"gpu_check ({res['mode']}, device {res['device']}{', ' + res['gpu'] if res['gpu'] else ''}): "
           f"workflow {res['workflow_s']:.1f} s",
           f"{'stage':<16}{'job s':>9}{'GPU GiB':>9}{'RSS GiB':>9}  figures"]
    for name, what, wall, gpu, rss in rows:
        out.append(f"{name:<16}{fmt(wall):>9}{fmt(gpu):>9}{fmt(rss):>9}  {what}")
    return "\n".join(out)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="tiny shapes on CPU (the test suite's run)")
    p.add_argument("--device", default=None, help="cpu / cuda / cuda:N (default: cpu with --small, else cuda)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu_check.json"), help="JSON of figures")
    p.add_argument("--workdir", default=None, help="work folder (default: a new temporary folder, removed unless --keep)")
    p.add_argument("--videos", type=int, default=None, help="demo videos (default 6 small, 40 GPU)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch (default 4 small, 16 GPU)")
    p.add_argument("--stage1-steps", type=int, default=None, help="stage-1 steps (default 3 small, 6 GPU)")
    p.add_argument("--stage2-steps", type=int, default=None, help="stage-2 (LoRA) steps (default 3 small, 6 GPU)")
    p.add_argument("--cores", type=int, default=None, help="snakemake --cores (default 2 small, all CPUs GPU)")
    p.add_argument("--llm-layers", type=int, default=None,
                   help="LLM layers of the paper-shaped run (default 32, Llama-3-8B; fewer to fit a time budget)")
    p.add_argument("--decode-workers", type=int, default=None,
                   help="features.decode_workers (default: the config default with --small, else min(8, CPUs - 2))")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    args = p.parse_args(argv)
    d = {"device": "cpu", "videos": 6, "batch_size": 4, "stage1_steps": 3, "stage2_steps": 3, "cores": 2} if args.small \
        else {"device": "cuda", "videos": 40, "batch_size": 16, "stage1_steps": 6, "stage2_steps": 6,
              "cores": os.cpu_count() or 2, "decode_workers": max(2, min(8, (os.cpu_count() or 4) - 2))}
    for k, v in d.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.videos < 4:
        p.error("--videos must be at least 4 (half train, half test)")
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_measure"]:
        return measure(argv[1], argv[2:])
    args = parse_args(argv)
    res = main_run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(table(res))
    print(f"gpu_check: figures -> {out}")
    if not args.keep and not args.workdir:
        shutil.rmtree(res["workdir"], ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
