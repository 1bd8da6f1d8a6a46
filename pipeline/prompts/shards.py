"""Q&A prompt shards: every video of a dataset becomes a *score* and a *level* instruction sample.

`lmmvqa prompts --config C --dataset D --manifest M --out-dir DIR` writes one JSONL file per part
(`fold<k>` for k-fold datasets, the official split name otherwise) into DIR, see docs/DESIGN.md:
one JSON object per line with `id, dataset, part, type, template, question, answer, mos, level`.

* The question is a template of the bank (`pipeline/data/templates.yaml`, or `prompts.templates`),
  chosen deterministically per (video id, seed, question type) by a hash — stable when videos are
  added or removed, independent of row order and of the Python hash seed. A template's `{media}`
  word is `video`, or `image` for an item whose file is an image (`media.media_of`), and
  `{video wording|image wording}` picks one of two wordings the same way (`render`); a video's
  questions read exactly as the bank did before it had these marks.
* Score answers are the MOS on 0-100 as text in `prompts.answer_format` (pipeline/prompts/answer_format.py:
  `decimal3`, the paper's three decimals `"63.215"`, or `integer`, `"63"`), and the score questions'
  answer-format constraint names it (`answer_format.with_format`); level answers are
  the manifest's `level` column (the dataset's 33rd / 66th MOS percentiles), recomputed the same
  way only when a manifest lacks the column.
* An unrated video (a `folder` dataset's) gets its questions with `answer`, `mos` and `level` null:
  evaluation scores it, the tokenizer and training never read it.
* The folder is written into a temporary sibling and renamed into place, so a reader never sees
  half a set of shards.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import pandas as pd
import yaml

from pipeline import DATA_DIR
from pipeline.cli_args import add_config_arg
from pipeline.core import resolve
from pipeline.core.errors import UserError
from pipeline.core.levels import LEVELS
from pipeline.core.levels import levels as manifest_levels
from pipeline.ingest.manifest import read_manifest
from pipeline.ingest.media import media_of
from pipeline.prompts.answer_format import PAPER_FORMAT, with_format
from pipeline.prompts.answer_format import answer_format as get_format
from pipeline.prompts.selectors import official_split_names, part_of_row

if TYPE_CHECKING:
    from pipeline.core.settings import Dataset, PromptSettings

BANK_PATH = DATA_DIR / "templates.yaml"
QUESTION_TYPES = ("score", "level")
FIELDS = ("id", "dataset", "part", "type", "template", "question", "answer", "mos", "level")


@lru_cache(maxsize=8)
def _load_bank(path: str) -> dict[str, tuple[str, ...]]:
    p = Path(path)
    if not p.exists():
        raise UserError(f"template bank not found: {p}")
    data = yaml.safe_load(p.read_text()) or {}
    bank = {}
    for qtype in QUESTION_TYPES:
        items = data.get(qtype)
        if not isinstance(items, list) or not items or not all(isinstance(t, str) and t.strip() for t in items):
            raise UserError(f"{p}: '{qtype}' must be a non-empty list of template strings")
        bank[qtype] = tuple(" ".join(t.split()) for t in items)
    return bank


MEDIA_WORD = re.compile(r"\{media\}")
MEDIA_CHOICE = re.compile(r"\{([^{}|]*)\|([^{}|]*)\}")


def render(template: str, media: str = "video") -> str:
    """A template's text for an item: `{media}` -> video / image, `{for a video|for an image}` -> the
    first or the second wording. Text without these marks is returned as written."""
    if media not in ("video", "image"):
        raise ValueError(f"unknown media '{media}' (video or image)")
    text = MEDIA_WORD.sub(media, template)
    return MEDIA_CHOICE.sub(lambda m: m.group(1) if media == "video" else m.group(2), text)


class TemplateBank(dict):
    """{'score': (...), 'level': (...)} as a video's questions read (the bank's text rendered for video),
    with the bank as written (`raw`, its `{media}` marks kept) for other media (`for_media`)."""

    def __init__(self, raw: dict[str, tuple[str, ...]]):
        super().__init__({q: tuple(render(t, "video") for t in ts) for q, ts in raw.items()})
        self.raw = raw
        self._image = {q: tuple(render(t, "image") for t in ts) for q, ts in raw.items()}

    def for_media(self, media: str = "video") -> dict[str, tuple[str, ...]]:
        if media not in ("video", "image"):
            raise ValueError(f"unknown media '{media}' (video or image)")
        return self if media == "video" else self._image


def load_templates(path: str | Path | None = None, answer_format: str | None = None) -> TemplateBank:
    """{'score': (...), 'level': (...)} from a YAML bank (None = the bank shipped in the package), the
    score questions asking for the answer format's numbers (`answer_format.with_format`; None = the
    paper's format: the bank as written), as a video's questions read; `.for_media("image")` gives an
    image's, `.raw` the bank with its `{media}` marks (what a model folder keeps)."""
    bank = _load_bank(str(path or BANK_PATH))
    if answer_format is None or answer_format == PAPER_FORMAT:
        return TemplateBank(bank)
    fmt = get_format(answer_format)
    return TemplateBank({**bank, "score": tuple(with_format(q, fmt) for q in bank["score"])})


def template_index(video_id: str, seed: int, qtype: str, n_templates: int, k: int = 0) -> int:
    """Deterministic template choice for a video; `k` > 0 gives the k-th alternative (for asking
    with several templates at evaluation time)."""
    digest = hashlib.sha256(f"{int(seed)}\x1f{qtype}\x1f{video_id}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") + int(k)) % n_templates


def question_for(video_id: str, qtype: str, seed: int = 0, bank: dict | None = None, k: int = 0,
                 media: str = "video") -> tuple[int, str]:
    """(template index, question text) of an item's `qtype` question; `media` image asks about an image
    (the same template, its `{media}` marks rendered for an image)."""
    bank = bank or load_templates()
    idx = template_index(video_id, seed, qtype, len(bank[qtype]), k)
    if isinstance(bank, TemplateBank):
        return idx, bank.for_media(media)[qtype][idx]
    return idx, render(bank[qtype][idx], media)


def score_answer(mos: float, answer_format: str | None = None) -> str:
    """The answer text of a MOS under an answer format (None: the paper's three decimals)."""
    return get_format(answer_format).render(mos)


def levels_from_mos(mos: pd.Series) -> pd.Series:
    """good / fair / poor by the dataset's 33rd / 66th percentiles: the manifest's rule
    (levels.levels), for manifests written without a level column."""
    return pd.Series(manifest_levels(mos), index=mos.index)


def part_names(ds: "Dataset", manifest: pd.DataFrame) -> list[str]:
    """Every part of a dataset: all k folds for k-fold datasets (empty ones included), else the split names."""
    if not ds.rated:  # unrated videos (format folder): one part, `all`
        return ["all"]
    present = sorted(set(manifest.apply(part_of_row, axis=1))) if len(manifest) else []
    if ds.split.scheme == "kfold" and (not present or all(p.startswith("fold") for p in present)):
        return sorted(set(present) | {f"fold{f}" for f in range(ds.split.k)}, key=_part_key)
    return sorted(set(present) | set(official_split_names(ds)) - {"all"} if present else official_split_names(ds))


def _part_key(name: str):
    return (0, int(name[4:])) if name.startswith("fold") and name[4:].isdigit() else (1, name)


def build_samples(manifest: pd.DataFrame, dataset: str, seed: int = 0,
                  questions: Iterable[str] = QUESTION_TYPES, bank: dict | None = None,
                  answer_format: str | None = None) -> list[dict]:
    """The Q&A samples of a manifest, in manifest row order (score then level per video); score answers
    in `answer_format` (None: the paper's), questions from `bank` (default: the package's, formatted)."""
    bank = bank or load_templates(None, answer_format)
    questions = [q for q in QUESTION_TYPES if q in set(questions)]
    if not len(manifest):
        return []
    df = manifest.copy()
    for col in ("id", "mos"):
        if col not in df.columns:
            raise UserError(f"manifest of '{dataset}' has no '{col}' column")
    df["mos"] = pd.to_numeric(df["mos"], errors="raise").astype(float)
    rated = df["mos"].notna()  # a `folder` dataset's videos have no MOS: their samples carry no answer
    if "level" not in df.columns or (df.loc[rated, "level"].astype(str) == "").any():
        df["level"] = levels_from_mos(df["mos"])
    bad = df[rated & ~df["level"].isin(LEVELS)]
    if len(bad):
        raise UserError(f"manifest of '{dataset}': level '{bad['level'].iloc[0]}' of video {bad['id'].iloc[0]} "
                        f"is not one of {', '.join(LEVELS)}")
    df["part"] = df.apply(part_of_row, axis=1)
    media = [media_of(p) for p in df["path"]] if "path" in df.columns else ["video"] * len(df)
    samples = []
    for row, kind, has_mos in zip(df.itertuples(index=False), media, rated):
        vid = str(row.id)
        for qtype in questions:
            idx, question = question_for(vid, qtype, seed, bank, media=kind)
            if not has_mos:
                answer = None
            else:
                answer = score_answer(row.mos, answer_format) if qtype == "score" else str(row.level)
            samples.append({"id": vid, "dataset": dataset, "part": row.part, "type": qtype, "template": idx,
                            "question": question, "answer": answer,
                            "mos": round(float(row.mos), 6) if has_mos else None,
                            "level": str(row.level) if has_mos else None})
    return samples


def write_shards(samples: list[dict], parts: list[str], out_dir: str | Path) -> dict[str, int]:
    """Write `<part>.jsonl` for every part (atomically, the whole folder). Returns part -> sample count."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    by_part: dict[str, list[dict]] = {p: [] for p in parts}
    for s in samples:
        by_part.setdefault(s["part"], []).append(s)
    for part, rows in by_part.items():
        with open(tmp / f"{part}.jsonl", "w") as f:
            for s in rows:
                f.write(json.dumps({k: s[k] for k in FIELDS}, ensure_ascii=False) + "\n")
    if out_dir.exists():
        old = out_dir.with_name(f"{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)
    return {p: len(r) for p, r in by_part.items()}


def read_prompts(paths: Iterable[str | Path]) -> list[dict]:
    """Samples of JSONL shards; a folder argument reads every `*.jsonl` in it (sorted)."""
    out = []
    for p in paths:
        p = Path(p)
        files = sorted(p.glob("*.jsonl"), key=lambda f: _part_key(f.stem)) if p.is_dir() else [p]
        for f in files:
            if not f.exists():
                raise UserError(f"prompt shard not found: {f}")
            with open(f) as fh:
                for n, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            out.append(json.loads(line))
                        except json.JSONDecodeError as exc:
                            raise UserError(f"{f}:{n}: not valid JSON ({exc})") from None
    return out


def build_prompts(prompts: "PromptSettings", dataset: "Dataset", manifest_path: str | Path,
                  out_dir: str | Path) -> dict[str, int]:
    """The prompt shards of one dataset (`Settings.dataset(name)`) under the run's prompt settings."""
    manifest = read_manifest(manifest_path)
    fmt = prompts.answer_format
    bank = load_templates(prompts.templates, fmt)
    samples = build_samples(manifest, dataset.name, prompts.seed, prompts.questions, bank, fmt)
    return write_shards(samples, part_names(dataset, manifest), out_dir)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_config_arg(parser)
    parser.add_argument("--dataset", required=True, help="dataset name in the config")
    parser.add_argument("--manifest", required=True, help="the dataset's manifest CSV")
    parser.add_argument("--out-dir", required=True, help="folder for <part>.jsonl shards (replaced atomically)")


def main(args) -> int:
    s = resolve.load(args.config)
    counts = build_prompts(s.prompts, s.dataset(args.dataset), args.manifest, args.out_dir)
    total = sum(counts.values())
    print(f"prompts: {args.dataset}: {total} samples in {len(counts)} shards -> {args.out_dir} "
          f"({', '.join(f'{p}={n}' for p, n in counts.items())})")
    return 0
