"""`lmmvqa score`: quality scores for video files outside any dataset, with a trained model folder.

    lmmvqa score VIDEO_OR_FOLDER... [--model DIR | --config C [--experiment E]] [--device cpu|cuda] [--dtype D]
                 [--out FILE] [--decoding constrained|free] [--decode-deadline S]

Without `--model`, the model is the one the config's experiment (default: its first) ships:
`results/models/<E>` for one held-out fold, `results/models/<E>/all` (trained on every fold) for
`folds: all`; the config is `--config`, else `config.yaml` in the working directory. When that
folder has no trained model, the error names the command that makes one. The model's cross-validated
or held-out figures, where the workflow has written them, are printed on stderr: what its scores are worth.

Each video goes decode -> features (the extraction settings the model was trained with, recorded in
its `lmmvqa.json`) -> model -> answers (decoded as its recorded `evaluation.decoding`, default
constrained, unless `--decoding` says otherwise), through the same functions as the workflow (extractor.Extractor,
predict.predict_batch). The decode runs in a decode worker process (decode_pool.DecodePool) under the
video's deadline (`sampling.decode_deadline` as the model folder records it, `--decode-deadline` for
its base seconds): a video whose decode hangs is killed there, tried with the fallback backend, and
then gets an error line ("... timed out ..."). One JSON line per video: video, score (parsed greedy answer, null when
invalid), prob_score (with a quality prior also its two parts, lmm_prob_score and quality_score), level, p_good/p_fair/p_poor, text, invalid, decoding, seconds. A video that fails gives a
line with `error` and the others still score; the exit code is 1 when any failed. Before scoring, stderr
names the model folder, its preset and what each role was built from (its recorded `provenance`).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pipeline.cli_args import add_decode_deadline_arg, add_device_arg, add_dtype_arg
from pipeline.core import paths
from pipeline.core.config import load_config, schema
from pipeline.core.errors import UserError
from pipeline.core.provenance import describe_roles
from pipeline.evaluation.predict import predict_batch
from pipeline.core.deadline import with_decode_deadline
from pipeline.features.decode import DecodeError
from pipeline.features.decode_pool import DecodePool
from pipeline.features.extractor import Extractor
from pipeline.features.store_reader import collate_videos
from pipeline.ingest.labels import is_video_file, video_id
from pipeline.model.answers import LEVEL_PROB_COLUMNS
from pipeline.model.lmm import LMMVQA
from pipeline.prompts.experiments import experiment_folds, shipped_model, unseen_tests
from pipeline.prompts.shards import load_templates


def expand_inputs(items) -> list[Path]:
    """Files as given; folders -> their video files (sorted, not recursive)."""
    out = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and is_video_file(f.name))
            if not found:
                raise UserError(f"{p}: no video files in this folder")
            out += found
        else:
            out.append(p)  # a missing file gets an error line of its own
    return out


class Scorer:
    """A model folder + the feature extractor it was trained with."""

    def __init__(self, model_dir, device: str = "cpu", threads: int | None = None, dtype: str | None = None,
                 decoding: str | None = None, decode_deadline: float | None = None):
        model_dir = Path(model_dir)
        self.decoders = DecodePool(1)  # the worker starts while the model loads
        try:
            self._load(model_dir, device, threads, dtype, decoding, decode_deadline)
        except BaseException:
            self.decoders.close()
            raise

    def _load(self, model_dir: Path, device, threads, dtype, decoding, decode_deadline) -> None:
        self.model = LMMVQA.from_pretrained(model_dir, device=device, dtype=dtype)
        cfg = self.model.config
        if "extraction" not in cfg:
            raise UserError(f"{model_dir}: the model folder does not record its feature extraction settings "
                            "(trained by an older version); retrain it")
        self.extractor = Extractor(with_decode_deadline(cfg["extraction"], decode_deadline), device=device,
                                   threads=threads)
        self.decoders.start(self.extractor.sampler)
        bank = model_dir / "templates.yaml"
        self.bank = load_templates(bank if bank.exists() else None, self.model.answer_format.name)
        self.seed = int(cfg.get("prompts_seed", 0))
        self.evaluation = cfg.get("evaluation") or {}
        self.decoding = decoding or self.evaluation.get("decoding") or default_decoding()
        self.model_dir = model_dir

    def describe(self) -> str:
        """What scores the videos: the model folder, its preset, and what each role was built from."""
        cfg = self.model.config
        preset = ((cfg.get("extraction") or {}).get("models") or {}).get("preset")
        lines = [f"lmmvqa score: model {self.model_dir} (preset {preset}, experiment {cfg.get('experiment')})"]
        if not cfg.get("provenance"):
            lines.append("  (the model folder does not record what its roles were built from: trained by an older version)")
        else:
            lines += [f"  {role}: {text}" for role, text in describe_roles(cfg["provenance"]).items()]
        return "\n".join(lines)

    def close(self) -> None:
        self.decoders.close()

    def features(self, path) -> tuple:
        """`Extractor.features`, with the decode in the worker process under the video's deadline."""
        decoded, error, _ = self.decoders.result(self.decoders.submit(str(path)))
        if decoded is None:
            raise DecodeError(error.removeprefix("DecodeError: "))
        outs, vs, ms = self.extractor.encode([decoded])
        spatial, motion = outs[0]
        return spatial, motion, dict(decoded.meta, vision_s=round(vs, 4), motion_s=round(ms, 4))

    def score(self, path) -> dict:
        t0 = time.perf_counter()
        spatial, motion, meta = self.features(path)
        # the model was trained on features as stored (float16 by default): round the same way
        f = self.model.config["extraction"]["features"]
        spatial = spatial.astype(f["spatial_dtype"]).astype("float32")
        motion = motion.astype(f["motion_dtype"]).astype("float32")
        batch = collate_videos([(spatial, motion)])
        # the question templates are drawn per video id, as the prompt stage draws them for a dataset's
        # videos (the file name without its extension), so a dataset's video gets the same questions here
        row = predict_batch(self.model, batch, [video_id(Path(path).name)], bank=self.bank, seed=self.seed,
                            templates=int(self.evaluation.get("templates_per_video", 1)),
                            max_new_tokens=int(self.evaluation.get("max_new_tokens", 8)),
                            decoding=self.decoding)[0]
        return {
            "video": str(path), "score": row["score"], "prob_score": round(row["prob_score"], 4),
            **({"lmm_prob_score": round(row["lmm_prob_score"], 4), "quality_score": round(row["quality_score"], 4)}
               if row["quality_score"] is not None else {}),
            "level": row["level"] or None, **{col: round(row[col], 4) for col in LEVEL_PROB_COLUMNS.values()},
            "text": row["text"], "invalid": bool(row["invalid"]),
            "decoding": self.decoding,
            "duration": meta.get("duration"), "backend": meta.get("backend"),
            "seconds": round(time.perf_counter() - t0, 3),
        }


def default_decoding() -> str:
    """evaluation.decoding's schema default (for model folders that do not record it)."""
    return schema()["properties"]["evaluation"]["properties"]["decoding"]["default"]


def score_videos(videos, model_dir, device: str = "cpu", out=None, threads: int | None = None,
                 dtype: str | None = None, decoding: str | None = None, decode_deadline: float | None = None) -> int:
    """Score every video, writing JSON lines to `out` (a text stream). Returns the number that failed."""
    out = out or sys.stdout
    inputs = expand_inputs(videos)
    scorer = Scorer(model_dir, device=device, threads=threads, dtype=dtype, decoding=decoding,
                    decode_deadline=decode_deadline)
    try:
        print(scorer.describe(), file=sys.stderr, flush=True)
        failed = 0
        for path in inputs:
            try:
                if not path.is_file():
                    raise FileNotFoundError(f"no such file: {path}")
                line = scorer.score(path)
            except Exception as exc:  # one bad video must not stop the others
                failed += 1
                line = {"video": str(path), "error": f"{type(exc).__name__}: {exc}"}
            out.write(json.dumps(line, allow_nan=False) + "\n")
            out.flush()
    finally:
        scorer.close()
    return failed


DEFAULT_CONFIG = Path("config.yaml")


def default_model(config: str | Path | None = None, experiment: str | None = None) -> tuple[Path, str]:
    """(model folder, what it is worth) of a config's experiment (default: the first one): the model it
    ships (`experiments.shipped_model`). A UserError names the command that trains it when it is missing."""
    path = Path(config) if config else DEFAULT_CONFIG
    if not path.is_file():
        raise UserError(f"no --model given and no config at {path} to find the default experiment's model: pass "
                        "--model results/models/<experiment> (or --config C)")
    cfg = load_config(path)
    if not cfg["experiments"]:
        raise UserError(f"{path} has no experiments, so no model: pass --model DIR")
    name = experiment or next(iter(cfg["experiments"]))
    folder = shipped_model(cfg, name)
    if not (folder / "lmmvqa.json").is_file():
        configfile = "" if path == DEFAULT_CONFIG else f" --configfile {path}"
        raise UserError(f"no trained model in {folder} (experiment '{name}' of {path}): train it with "
                        f"`snakemake --cores 2{configfile} {folder}` (or the whole run, `snakemake --cores 2{configfile}`), "
                        "or pass --model DIR")
    return folder, model_worth(cfg, name, folder)


def model_worth(cfg: dict, experiment: str, folder: Path) -> str:
    """One line: which model, and its figures on each test set from the workflow's metrics (mean ± std
    over folds for a model trained on every fold), or that they are not computed yet."""
    folds = experiment_folds(cfg, experiment)
    kind = (f"trained on every fold; worth its {len(folds)} per-fold models' figures on videos they did not train on"
            if folds is not None else "its figures on videos it did not train on")
    cells = []
    for test in unseen_tests(cfg, experiment):
        m = _read_metrics(paths.metrics(experiment, test))
        if m is None:
            cells.append(f"{test}: not evaluated yet ({paths.metrics(experiment, test)})")
            continue
        agg = ((m.get("aggregate") or {}).get("prob") or {}).get("srcc") or {}
        srcc = agg.get("mean", ((m.get("methods") or {}).get("prob") or {}).get("srcc"))
        std = agg.get("std")
        value = "n/a" if srcc is None else f"{srcc:.3f}" + ("" if std is None else f" ± {std:.3f}")
        cells.append(f"{test}: prob SRCC {value} (n={m.get('n')})")
    return f"model {folder} (experiment '{experiment}', {kind}): " + "; ".join(cells)


def _read_metrics(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("videos", nargs="+", help="video files and/or folders of videos")
    parser.add_argument("--model", default=None,
                        help="trained model folder (default: the model the config's experiment ships: "
                             "results/models/<experiment>, or results/models/<experiment>/all for folds: all)")
    parser.add_argument("--config", default=None,
                        help=f"workflow config whose experiment's model to use without --model (default {DEFAULT_CONFIG})")
    parser.add_argument("--experiment", default=None, help="that experiment (default: the config's first)")
    add_device_arg(parser, default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--threads", type=int, default=None, help="torch + decoder threads")
    parser.add_argument("--out", default=None, help="write the JSON lines to this file (default: stdout)")
    parser.add_argument("--decoding", choices=["constrained", "free"], default=None,
                        help="text answers: constrained (always a valid number / level word) or free greedy "
                             "(default: the model's recorded evaluation.decoding)")
    add_dtype_arg(parser)
    add_decode_deadline_arg(parser)


def main(args) -> int:
    if args.model is None:
        args.model, worth = default_model(args.config, args.experiment)
        print(f"lmmvqa score: {worth}", file=sys.stderr)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w") as fh:
            failed = score_videos(args.videos, args.model, args.device, fh, args.threads, args.dtype, args.decoding,
                                  args.decode_deadline)
    else:
        failed = score_videos(args.videos, args.model, args.device, threads=args.threads, dtype=args.dtype,
                              decoding=args.decoding, decode_deadline=args.decode_deadline)
    if failed:
        print(f"lmmvqa score: {failed} video(s) failed (see their 'error' lines)", file=sys.stderr)
    return 1 if failed else 0
