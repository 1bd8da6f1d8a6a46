"""`lmmvqa score`: quality scores for video files outside any dataset, with a trained model folder.

    lmmvqa score VIDEO_OR_FOLDER... [--model DIR [--model DIR2 ...]] [--config C [--experiment E]]
                 [--device cpu|cuda] [--dtype D] [--out FILE] [--decoding constrained|free|mbr] [--decode-deadline S]

Without `--model`, the model is the one the config's experiment (default: its first) ships:
`results/models/<E>` for one held-out fold, with its ensemble members `results/models/<E>.member<i>`
(`experiments.<E>.ensemble`), `results/models/<E>/all` (trained on every fold) for `folds: all`; the
config is `--config`, else `config.yaml` in the working directory. When a folder has no trained model,
the error names the command that makes one. Without `--config`, when there is no config.yaml or its
experiment has no trained model yet, the model is the one committed in the repository (models/lmmvqa-offline,
pipeline/evaluation/ship.py), and stderr says so with what it was trained on and its cross-validated figures
per kind of data. The model's cross-validated or held-out figures, where the
workflow has written them, are printed on stderr: what its scores are worth. Several `--model` folders
are an ensemble.

Image files (JPEG, PNG, ...) score as stills: one key frame, the still's motion row, image questions
(pipeline/features/decoding/decode_image.py). Each video goes decode -> features (the extraction settings the model was trained with, recorded in
its `lmmvqa.json`, with the quality adapter the model folder holds a copy of) -> model(s) -> answers,
through the same functions as the workflow (extractor.Extractor, predict.predict_batch, which also
averages an ensemble's members as evaluation does). The decode runs in a decode worker process
(decode_pool.DecodePool) under the video's deadline (`sampling.decode_deadline` as the model folder records
it, `--decode-deadline` for its base seconds): a video whose decode hangs is killed there, tried with the
fallback backend, and then gets an error line ("... timed out ..."). The evaluation settings (evaluation.decoding,
templates_per_video, max_new_tokens) are one source with `lmmvqa evaluate`: the config's `evaluation`
block whenever a config is in play (`--config`, or config.yaml when it picks the model); only a bare
`--model DIR` falls back to the settings recorded in the model folder at training. `--decoding`
overrides the decoding. One JSON line per video: video, score (the parsed text answer, greedy or under mbr the median, null when
invalid), prob_score (with a quality prior the blend (1 - w) x lmm_prob_score + w x quality_score, with
its two parts and w as quality_prior), level, p_good/p_fair/p_poor, text, invalid, decoding, media (video or image), seconds. A video that fails gives a
line with `error` and the others still score; the exit code is 1 when any failed. Before scoring, stderr
names the model folder(s), its preset, what each role was built from (its recorded `provenance`) and
where the evaluation settings come from.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from pipeline.cli_args import add_decode_deadline_arg, add_device_arg, add_dtype_arg
from pipeline.core import paths, resolve
from pipeline.core.config import schema
from pipeline.core.errors import UserError
from pipeline.core.provenance import describe_roles
from pipeline.evaluation.predict import DECODINGS, predict_batch
from pipeline.evaluation.ship import SHIPPED_MODEL, shipped_summary
from pipeline.features.decoding.sampling import DecodeError
from pipeline.features.decoding.decode_pool import DecodePool
from pipeline.features.extractor import Extractor
from pipeline.features.stores.store_reader import collate_videos
from pipeline.ingest.media import is_image_file, is_video_file, item_id
from pipeline.model.answers import LEVEL_PROB_COLUMNS
from pipeline.model.lmm import LMMVQA
from pipeline.model.model_files import scoring_extraction
from pipeline.core.settings import as_dict
from pipeline.prompts.selectors import shipped_model, unseen_tests
from pipeline.prompts.shards import load_templates
from pipeline.training.runs import member_model_dirs

if TYPE_CHECKING:
    from pipeline.core.settings import Dataset, EvaluationSettings, Experiment, FeatureSettings, Settings


def expand_inputs(items) -> list[Path]:
    """Files as given; folders -> their video and image files (sorted, not recursive)."""
    out = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and (is_video_file(f.name) or is_image_file(f.name)))
            if not found:
                raise UserError(f"{p}: no video or image files in this folder")
            out += found
        else:
            out.append(p)  # a missing file gets an error line of its own
    return out


class Scorer:
    """A model folder (several: an ensemble, scored as `lmmvqa evaluate` scores it) + the feature extractor
    it was trained with. `evaluation`: the evaluation settings to answer with (a config's); None: those
    the model folder recorded at training."""

    def __init__(self, model_dir, device: str = "cpu", threads: int | None = None, dtype: str | None = None,
                 decoding: str | None = None, evaluation: "EvaluationSettings | None" = None,
                 decode_deadline: float | None = None):
        self.decoders = DecodePool(1)  # the worker starts while the model loads
        try:
            self._load(model_dir, device, threads, dtype, decoding, evaluation, decode_deadline)
        except BaseException:
            self.decoders.close()
            raise

    def _load(self, model_dir, device, threads, dtype, decoding, evaluation, decode_deadline) -> None:
        dirs = [Path(d) for d in (model_dir if isinstance(model_dir, (list, tuple)) else [model_dir])]
        self.models = [LMMVQA.from_pretrained(d, device=device, dtype=dtype) for d in dirs]
        self.model = self.models[0]
        record = self.model.config  # the model folder's lmmvqa.json
        check_members(dirs, self.models)
        self.feature_settings = resolve.extraction_settings(scoring_extraction(dirs[0], record)).with_decode_deadline(
            decode_deadline)
        self.extractor = Extractor(self.feature_settings, device=device, threads=threads)
        self.decoders.start(self.extractor.sampler)
        bank = dirs[0] / "templates.yaml"
        self.bank = load_templates(bank if bank.exists() else None, self.model.answer_format.name)
        self.seed = int(record.get("prompts_seed", 0))
        self.evaluation_source = "the config" if evaluation is not None else "recorded in the model folder"
        self.evaluation = as_dict(evaluation) if evaluation is not None else (record.get("evaluation") or {})
        self.decoding = decoding or self.evaluation.get("decoding") or default_decoding()
        self.model_dirs = dirs
        self.model_dir = dirs[0]

    def describe(self) -> str:
        """What scores the videos: the model folder(s), its preset, what each role was built from, and
        where the evaluation settings come from."""
        record = self.model.config
        preset = ((record.get("extraction") or {}).get("models") or {}).get("preset")
        which = (f"model {self.model_dir}" if len(self.models) == 1 else
                 f"ensemble of {len(self.models)} models {', '.join(map(str, self.model_dirs))}")
        lines = [f"lmmvqa score: {which} (preset {preset}, experiment {record.get('experiment')})"]
        if not record.get("provenance"):
            lines.append("  (the model folder does not record what its roles were built from: trained by an older version)")
        else:
            lines += [f"  {role}: {text}" for role, text in describe_roles(record["provenance"]).items()]
        ev = self.evaluation
        lines.append(f"  evaluation settings ({self.evaluation_source}): decoding {self.decoding}, "
                     f"templates_per_video {int(ev.get('templates_per_video', 1))}, "
                     f"max_new_tokens {int(ev.get('max_new_tokens', 8))}")
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
        spatial = spatial.astype(self.feature_settings.spatial_dtype).astype("float32")
        motion = motion.astype(self.feature_settings.motion_dtype).astype("float32")
        batch = collate_videos([(spatial, motion)])
        # the question templates are drawn per video id, as the prompt stage draws them for a dataset's
        # videos (the file name without its extension), so a dataset's video gets the same questions here;
        # an ensemble's members are averaged by the function evaluation averages them with; a still image
        # (decoded as one) is asked about as an image
        row = predict_batch(self.models if len(self.models) > 1 else self.model, batch, [item_id(Path(path).name)],
                            bank=self.bank, seed=self.seed,
                            templates=int(self.evaluation.get("templates_per_video", 1)),
                            max_new_tokens=int(self.evaluation.get("max_new_tokens", 8)),
                            decoding=self.decoding, media=["image" if meta.get("still") else "video"])[0]
        return {
            "video": str(path), "score": row["score"], "prob_score": round(row["prob_score"], 4),
            # with a quality prior, prob_score is the blend: its weight and both parts, as evaluation's rows
            **({"lmm_prob_score": round(row["lmm_prob_score"], 4), "quality_score": round(row["quality_score"], 4),
                "quality_prior": float(self.model.config["quality_prior"]["weight"])}
               if row["quality_score"] is not None else {}),
            "level": row["level"] or None, **{col: round(row[col], 4) for col in LEVEL_PROB_COLUMNS.values()},
            "text": row["text"], "invalid": bool(row["invalid"]),
            "decoding": self.decoding,
            "media": "image" if meta.get("still") else "video",
            "duration": meta.get("duration"), "backend": meta.get("backend"),
            "seconds": round(time.perf_counter() - t0, 3),
        }


def check_members(dirs: list[Path], models: list) -> None:
    """An ensemble's members must see the same features and questions: same extraction settings, quality
    adapter, answer format and prompt seed."""
    first = models[0].config
    for d, m in zip(dirs[1:], models[1:]):
        for key in ("extraction", "quality_adapter", "prompts_seed"):
            if m.config.get(key) != first.get(key):
                raise UserError(f"ensemble members {dirs[0]} and {d} differ in `{key}` (lmmvqa.json): they cannot "
                                "score from the same features")
        if m.answer_format != models[0].answer_format:
            raise UserError(f"ensemble members {dirs[0]} and {d} answer in different formats")


def default_decoding() -> str:
    """evaluation.decoding's schema default (for model folders that do not record it)."""
    return schema()["properties"]["evaluation"]["properties"]["decoding"]["default"]


def score_videos(videos, model_dir, device: str = "cpu", out=None, threads: int | None = None,
                 dtype: str | None = None, decoding: str | None = None, evaluation: "EvaluationSettings | None" = None,
                 decode_deadline: float | None = None) -> int:
    """Score every video, writing JSON lines to `out` (a text stream). Returns the number that failed.
    `model_dir`: a model folder, or a list of them (an ensemble); `evaluation`: see Scorer."""
    out = out or sys.stdout
    inputs = expand_inputs(videos)
    scorer = Scorer(model_dir, device=device, threads=threads, dtype=dtype, decoding=decoding, evaluation=evaluation,
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


def scoring_config(config: str | Path | None = None) -> tuple[Path, "Settings"]:
    """(path, resolved settings) of `--config`, else `config.yaml` in the working directory."""
    path = Path(config) if config else DEFAULT_CONFIG
    if not path.is_file():
        raise UserError(f"no config at {path} (it names the default experiment's model and the evaluation "
                        "settings): pass --model results/models/<experiment> (or --config C)")
    return path, resolve.load(path)


def default_model(config: str | Path | None = None, experiment: str | None = None) -> tuple[list[Path], str]:
    """(model folders, what they are worth) of a config's experiment (default: the first one): the model it
    ships (`experiments.shipped_model`), with its ensemble members (`experiments.<E>.ensemble`) where
    they are trained beside it. A UserError names the command that trains a missing one."""
    path, settings = scoring_config(config)
    if not settings.experiments:
        raise UserError(f"{path} has no experiments, so no model: pass --model DIR")
    exp = settings.experiment(experiment or next(iter(settings.experiments)))
    name = exp.name
    folders = shipped_models(exp)
    for folder in folders:
        if not (folder / "lmmvqa.json").is_file():
            configfile = "" if path == DEFAULT_CONFIG else f" --configfile {path}"
            raise UserError(f"no trained model in {folder} (experiment '{name}' of {path}): train it with "
                            f"`snakemake {folder} --cores 2{configfile}` (the target first: --configfile takes every "
                            f"word after it), or the whole run, `snakemake --cores 2{configfile}`; "
                            "or pass --model DIR")
    return folders, model_worth(exp, settings.datasets, folders)


def shipped_models(exp: "Experiment") -> list[Path]:
    """The model folders that score for an experiment: the model it ships, then its ensemble members
    (`<E>.member<i>`, as `lmmvqa evaluate` averages them) for an experiment with one held-out split. The
    workflow trains ensemble members per fold only, so a `folds: all` experiment ships its one model on
    every fold."""
    if exp.every_fold:
        return [shipped_model(exp)]
    return member_model_dirs(exp)


def model_worth(exp: "Experiment", datasets: Mapping[str, "Dataset"], folders: list[Path]) -> str:
    """One line: which model (or ensemble), and its figures on each test set from the workflow's metrics
    (mean ± std over folds for a model trained on every fold), or that they are not computed yet."""
    experiment = exp.name
    folds = exp.folds
    members = exp.ensemble
    if folds is not None:
        kind = (f"trained on every fold; worth its {len(folds)} per-fold models' figures on videos they did not train on"
                if members == 1 else
                f"one model trained on every fold, not an ensemble: the figures are its {len(folds)} per-fold "
                f"ensembles' of {members} models, on videos they did not train on")
    else:
        kind = ("its figures on videos it did not train on" if len(folders) == 1 else
                f"an ensemble of {len(folders)} models, scores averaged; their figures on videos they did not train on")
    cells = []
    for test in unseen_tests(exp, datasets):
        m = _read_metrics(paths.metrics(experiment, test))
        if m is None:
            cells.append(f"{test}: not evaluated yet ({paths.metrics(experiment, test)})")
            continue
        agg = ((m.get("aggregate") or {}).get("prob") or {}).get("srcc") or {}
        srcc = agg.get("mean", ((m.get("methods") or {}).get("prob") or {}).get("srcc"))
        std = agg.get("std")
        value = "n/a" if srcc is None else f"{srcc:.3f}" + ("" if std is None else f" ± {std:.3f}")
        cells.append(f"{test}: prob SRCC {value} (n={m.get('n')})")
    return f"model {', '.join(map(str, folders))} (experiment '{experiment}', {kind}): " + "; ".join(cells)


def _read_metrics(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("videos", nargs="+", help="video or image files and/or folders of them")
    parser.add_argument("--model", default=None, action="append", metavar="DIR",
                        help="trained model folder; repeated: an ensemble, scores averaged (default: the model the "
                             "config's experiment ships: results/models/<experiment> with its ensemble members, or "
                             "results/models/<experiment>/all for folds: all; without --config, when config.yaml is "
                             "absent or its model untrained: the shipped model models/lmmvqa-offline)")
    parser.add_argument("--config", default=None,
                        help=f"workflow config whose experiment's model to use without --model (default {DEFAULT_CONFIG}); "
                             "its `evaluation` settings apply (with or without --model), as `lmmvqa evaluate` applies them")
    parser.add_argument("--experiment", default=None, help="that experiment (default: the config's first)")
    add_device_arg(parser, default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--threads", type=int, default=None, help="torch + decoder threads")
    parser.add_argument("--out", default=None, help="write the JSON lines to this file (default: stdout)")
    parser.add_argument("--decoding", choices=list(DECODINGS), default=None,
                        help="text answers: constrained (always a valid number / level word), free greedy, or mbr (the "
                             "weighted median of the probability-score candidates) "
                             "(default: the model's recorded evaluation.decoding)")
    add_dtype_arg(parser)
    add_decode_deadline_arg(parser)


def model_to_use(config: str | Path | None, experiment: str | None) -> tuple[list[Path], str, bool]:
    """(model folders, the stderr line saying what they are worth, whether the config picked them) when no
    --model is given: the config's experiment's trained model; else, when the config was not named (no
    --config) and config.yaml is missing or its experiment's model is not trained, the shipped model
    (SHIPPED_MODEL, committed in the repository), with what it was trained on and its cross-validated
    figures. A named --config whose model is not trained stays an error naming the command that trains it."""
    if config is not None:
        folders, worth = default_model(config, experiment)
        return folders, worth, True
    why = None
    if not DEFAULT_CONFIG.is_file():
        why = f"no {DEFAULT_CONFIG} here"
    else:
        try:
            folders, worth = default_model(None, experiment)
            return folders, worth, True
        except UserError as exc:
            if not str(exc).startswith("no trained model in") or experiment:
                raise
            why = f"{DEFAULT_CONFIG}'s experiment has no trained model yet"
    if not (SHIPPED_MODEL / "lmmvqa.json").is_file():
        raise UserError(f"{why}, and the shipped model {SHIPPED_MODEL} is missing: pass --model DIR")
    return ([SHIPPED_MODEL], f"the shipped model {SHIPPED_MODEL} ({why}; --model DIR picks another): "
            f"{shipped_summary(SHIPPED_MODEL)}", False)


def main(args) -> int:
    # the evaluation settings: a config's (given, or config.yaml when it picks the model), as `lmmvqa
    # evaluate` answers with them; a bare --model DIR and the shipped model: those recorded in the model folder
    evaluation = scoring_config(args.config)[1].evaluation if args.config else None
    if args.model is None:
        args.model, worth, from_config = model_to_use(args.config, args.experiment)
        if from_config and evaluation is None:
            evaluation = scoring_config(None)[1].evaluation
        print(f"lmmvqa score: {worth}", file=sys.stderr)
        if from_config and (SHIPPED_MODEL / "lmmvqa.json").is_file():
            print(f"lmmvqa score: the model trained on real rated photos and videos that ships with the package: "
                  f"--model {SHIPPED_MODEL}", file=sys.stderr)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with (open(args.out, "w") if args.out else contextlib.nullcontext(sys.stdout)) as fh:
        failed = score_videos(args.videos, args.model, args.device, fh, args.threads, args.dtype, args.decoding,
                              evaluation, args.decode_deadline)
    if failed:
        print(f"lmmvqa score: {failed} video(s) failed (see their 'error' lines)", file=sys.stderr)
    return 1 if failed else 0
