"""`lmmvqa ship`: a trained model + what it is worth -> a folder to commit, that `lmmvqa score` scores with
when it has no other model (the repository's `models/lmmvqa-offline`, docs/shipped-model.md).

    lmmvqa ship --config C [--experiment E] [--card CARD.md] --out DIR

Copies the model the config's experiment ships (`results/models/<E>/all` for `folds: all`: the one trained
on every fold) without its training artefacts, every file readable by everyone, and records in its
`lmmvqa.json` a `shipped` block: what it was trained on (each training dataset, its kind and size), its
figures on content it did not train on (each test selector's per-fold results: the `folds: all`
experiment's per-fold models are the cross-validation), the sha256 of every weight file, and the commands
that rebuild it. The model card `README.md` is those facts as tables followed by CARD.md's text (what the
model has and has not been checked on, the training data's terms; default: `<config stem>-card.md` beside
the config, e.g. config/shipped-card.md). CARD.md starts with a YAML front matter
naming what kind of data each dataset is:

    ---
    title: LMM-VQA offline model
    datasets:
      clive-dev: photos rated by people (human MOS)
    ---

The weights are a function of the config, the data and the code (CPU training is deterministic): running
the workflow and this command again gives the same hashes (benchmarks/bench_shipped_model.py checks it).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import yaml

from pipeline.cli_args import add_config_arg
from pipeline.core import atomic, paths, resolve
from pipeline.core.errors import UserError
from pipeline.ingest.manifest import read_manifest
from pipeline.model.model_files import ADAPTER_FILE
from pipeline.prompts.selectors import parse_selector, shipped_model, unseen_tests

if TYPE_CHECKING:
    from pipeline.core.settings import Dataset, Experiment

# the model `lmmvqa score` uses when given no model and no trained experiment model is at hand
SHIPPED_MODEL = Path(__file__).resolve().parents[2] / "models" / "lmmvqa-offline"
# what a model folder needs to score; its training log, loss figure and training card stay behind
SCORING_FILES = ("lmmvqa.json", "projector.safetensors", "llm", "adapter", "tokenizer", "templates.yaml", ADAPTER_FILE)


def read_card(path: str | Path) -> tuple[dict, str]:
    """(front matter, text) of a card template; the front matter's `datasets` maps names to their kind."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if not text.startswith("---\n") or "\n---\n" not in text[4:]:
        raise UserError(f"{path}: a card template starts with a YAML front matter between '---' lines "
                        "(title, datasets: NAME: what kind of data)")
    head, body = text[4:].split("\n---\n", 1)
    meta = yaml.safe_load(head) or {}
    if not isinstance(meta.get("datasets"), dict):
        raise UserError(f"{path}: its front matter needs `datasets:` (dataset name -> what kind of data it is)")
    return meta, body.lstrip("\n")


def weight_hashes(folder: str | Path) -> dict[str, str]:
    """sha256 of every weight file (`*.safetensors`) of a model folder, by path inside it."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.safetensors"))}


def figures(exp: "Experiment", datasets: Mapping[str, "Dataset"], kinds: dict) -> list[dict]:
    """Per test selector the model's experiment never trained on (per fold: the held-out fold): SRCC and
    PLCC of the probability score, mean and std over folds and each fold's, from the workflow's metrics."""
    experiment = exp.name
    out = []
    for test in unseen_tests(exp, datasets):
        dataset = parse_selector(test)[0]
        path = paths.metrics(experiment, test)
        if not path.is_file():
            raise UserError(f"{path} not found: run the workflow first (`snakemake --cores 2 --configfile C`)")
        m = json.loads(path.read_text())
        agg = (m.get("aggregate") or {}).get("prob") or {}
        prob = (m.get("methods") or {}).get("prob") or {}
        split = datasets[dataset].split
        folds = m.get("folds") or len(m.get("fold_metrics") or []) or None
        out.append({
            "test": test, "dataset": dataset, "kind": kinds.get(dataset, dataset), "n": m.get("n"),
            "protocol": (f"{folds} folds" + (f" by {split.group_by} (each fold's model never saw that "
                                             f"{split.group_by})" if split.group_by else "")
                         if folds else "held-out fold"),
            "srcc": _round(prob.get("srcc")), "srcc_std": _round((agg.get("srcc") or {}).get("std")),
            "plcc": _round(prob.get("plcc")), "plcc_std": _round((agg.get("plcc") or {}).get("std")),
            "fold_srcc": [_round(((f.get("methods") or {}).get("prob") or {}).get("srcc"))
                          for f in m.get("fold_metrics") or []],
            "fold_names": fold_names(dataset, split.group_by, [f.get("fold") for f in m.get("fold_metrics") or []]),
            # a score blended with the quality prior is an ensemble: the answer head alone beside it
            **({"ensemble": True, "alone_srcc": _round(((m.get("methods") or {}).get("lmm_prob") or {}).get("srcc"))}
               if m.get("prob_ensemble") else {}),
        })
    return out


def fold_names(dataset: str, column: str | None, folds: list) -> list[str] | None:
    """What each fold holds when a dataset is folded by a column (e.g. its source), from its manifest."""
    manifest = paths.manifest(dataset)
    if not column or not manifest.is_file():
        return None
    table = read_manifest(manifest)
    if column not in table.columns:
        return None
    return ["+".join(sorted(table.loc[table["fold"] == f, column].astype(str).unique())) for f in folds]


def _round(x):
    return None if x is None else round(float(x), 4)


def trained_on(exp: "Experiment", datasets: Mapping[str, "Dataset"], kinds: dict) -> list[dict]:
    """Each training dataset: its kind (the card's words), format and number of rated items (its manifest)."""
    out = []
    for dataset in dict.fromkeys(parse_selector(s)[0] for s in exp.train):
        manifest = paths.manifest(dataset)
        if not manifest.is_file():
            raise UserError(f"{manifest} not found: run the workflow first")
        if dataset not in kinds:
            raise UserError(f"the card's front matter does not say what kind of data '{dataset}' is "
                            f"(datasets: {dataset}: ...)")
        out.append({"dataset": dataset, "kind": kinds[dataset], "format": datasets[dataset].format,
                    "items": int(len(read_manifest(manifest)))})
    return out


def ship(config: str | Path, card: str | Path, out: str | Path, experiment: str | None = None) -> dict:
    """Write the shipped model folder `out` (replaced whole); returns its `shipped` record."""
    settings = resolve.load(config)
    name = experiment or next(iter(settings.experiments), None)
    if name is None:
        raise UserError(f"{config} has no experiments")
    exp = settings.experiment(name)
    source = shipped_model(exp)
    if not (source / "lmmvqa.json").is_file():
        raise UserError(f"no trained model in {source}: run `snakemake --cores 2 --configfile {config}` first")
    meta, body = read_card(card)
    kinds = meta["datasets"]
    record = {"name": Path(out).name, "title": meta.get("title") or Path(out).name, "config": str(config),
              "experiment": name, "from": str(source),
              "folds": len(exp.folds or []) or None,
              "trained_on": trained_on(exp, settings.datasets, kinds), "figures": figures(exp, settings.datasets, kinds),
              "rebuild": [f"snakemake --cores 2 --configfile {config}",
                          f"lmmvqa ship --config {config}"
                          + ("" if Path(card) == default_card(config) else f" --card {card}") + f" --out {out}"]}
    with atomic.directory(out) as tmp:
        for item in SCORING_FILES:
            src = source / item
            if src.is_dir():
                shutil.copytree(src, tmp / item)
            elif src.is_file():
                shutil.copyfile(src, tmp / item)
        record["weights_sha256"] = weight_hashes(tmp)
        model_record = json.loads((tmp / "lmmvqa.json").read_text())
        model_record["shipped"] = record
        (tmp / "lmmvqa.json").write_text(json.dumps(model_record, indent=2, sort_keys=True, default=str) + "\n")
        (tmp / "README.md").write_text(model_card(record, body), encoding="utf-8")
        atomic.readable_by_all(tmp)
    return record


def model_card(record: dict, body: str) -> str:
    """README.md: the recorded facts as tables, then the card template's text."""
    lines = [f"# {record['title']}", "",
             "The model `lmmvqa score FILE...` uses when it is given no `--model` and no trained experiment "
             f"model is at hand (`lmmvqa score --model models/{record['name']} FILE...` asks for it by name). "
             "Videos and photos are scored 0-100 with a level (good / fair / poor).", "",
             "## Trained on", "", "| dataset | what it is | items |", "|---|---|---|"]
    lines += [f"| {t['dataset']} ({t['format']}) | {t['kind']} | {t['items']} |" for t in record["trained_on"]]
    lines += ["", "## What it is worth: cross-validated, on content it did not train on", "",
              f"Every fold's model of experiment `{record['experiment']}` ({record['config']}) trained on the other "
              "folds and was tested on its own; this model is trained on all of them. Probability score "
              "(`prob_score`) against the labels, mean ± std over folds.", "",
              "| data | test | protocol | n | SRCC | PLCC | SRCC per fold |", "|---|---|---|---|---|---|---|"]
    for f in record["figures"]:
        lines.append(f"| {f['kind']} | {f['test']} | {f['protocol']} | {f['n']} | {_pm(f['srcc'], f['srcc_std'])} | "
                     f"{_pm(f['plcc'], f['plcc_std'])} | {per_fold(f)} |")
    lines += [f"\n{f['test']}: the probability score is an ensemble of the answer head and the quality adapter's "
              f"score (the quality prior); the answer head alone: SRCC {_pm(f['alone_srcc'], None)}."
              for f in record["figures"] if f.get("ensemble")]
    lines += ["", "## Weights (sha256)", "", "| file | sha256 |", "|---|---|"]
    lines += [f"| `{k}` | `{v}` |" for k, v in record["weights_sha256"].items()]
    lines += ["", "Rebuild (needs the training data; gives these hashes again):", "", "```"]
    lines += record["rebuild"] + ["```", ""]
    return "\n".join(lines) + "\n" + body


def per_fold(figure: dict) -> str:
    """Each fold's SRCC, named by what the fold holds where the dataset is folded by a column."""
    names = figure.get("fold_names") or [None] * len(figure["fold_srcc"])
    return ", ".join(("" if n is None else f"{n} ") + ("n/a" if s is None else f"{s:.3f}")
                     for n, s in zip(names, figure["fold_srcc"]))


def _pm(mean, std) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.3f}" + ("" if std is None else f" ± {std:.3f}")


def shipped_summary(folder: str | Path) -> str:
    """One line for stderr: what a shipped model folder was trained on and its cross-validated figures
    per kind of data (its `lmmvqa.json` `shipped` block)."""
    try:
        record = json.loads((Path(folder) / "lmmvqa.json").read_text()).get("shipped") or {}
    except (OSError, ValueError):
        record = {}
    if not record:
        return f"{folder} (no record of what it was trained on)"
    data = ", ".join(f"{t['dataset']} ({t['items']} {t['kind']})" for t in record.get("trained_on", []))
    cells = [f"{f['kind']}: SRCC {_pm(f['srcc'], f['srcc_std'])} ({f['dataset']}, {f['protocol']}, n={f['n']})"
             for f in record.get("figures", [])]
    return (f"trained on {data}; cross-validated on content it did not train on: " + "; ".join(cells)
            + f" (card: {Path(folder) / 'README.md'})")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_config_arg(parser)
    parser.add_argument("--experiment", default=None, help="the experiment whose model ships (default: the config's first)")
    parser.add_argument("--card", default=None, metavar="MD",
                        help="model card template: YAML front matter (title, datasets: NAME: kind of data) + text "
                             "(default: <config without .yaml>-card.md beside the config)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the shipped model folder to write (replaced)")


def default_card(config: str | Path) -> Path:
    """The card template beside a config: config/shipped.yaml -> config/shipped-card.md."""
    config = Path(config)
    return config.with_name(f"{config.stem}-card.md")


def main(args) -> int:
    card = args.card or default_card(args.config)
    if not Path(card).is_file():
        raise UserError(f"no model card template at {card} (--card MD)")
    record = ship(args.config, card, args.out, args.experiment)
    print(f"lmmvqa ship: {args.out} from {record['from']}: {shipped_summary(args.out)}")
    for name, digest in record["weights_sha256"].items():
        print(f"  sha256 {digest}  {name}")
    return 0
