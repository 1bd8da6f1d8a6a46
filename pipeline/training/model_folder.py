"""The model folder's training artefacts, written next to what `LMMVQA.save_pretrained` writes
(docs/DESIGN.md "Model folder"): `lmmvqa.json` extras (experiment, stage, validation, train summary,
code version, the scoring settings `lmmvqa score` rebuilds inputs from, and `provenance`: what each
role was built from, pipeline/core/provenance.py), `templates.yaml` (the
question bank trained with), `train_log.csv` (step, loss, lr, samples_per_s), `loss.png` (the
training loss figure the report also draws, pipeline/training/plots.py) and the model card `README.md`.
`write_model_folder` assembles them in a staging sibling and renames it into place."""
from __future__ import annotations

import copy
import csv
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import pandas as pd
import yaml

from pipeline.core import provenance
from pipeline.core.errors import UserError
from pipeline.core.settings import as_dict
from pipeline.core.versions import code_version
from pipeline.model.model_files import ADAPTER_FILE
from pipeline.prompts.selectors import fold_dependent, parse_selector
from pipeline.prompts.shards import load_templates
from pipeline.training.plots import loss_figure

if TYPE_CHECKING:
    from pipeline.core.settings import (Adapter, Dataset, EvaluationSettings, Experiment, PromptSettings,
                                        TrainingSettings)

LOG_COLUMNS = ["step", "loss", "lr", "samples_per_s"]


def write_model_folder(out: str | Path, model, exp: "Experiment", stage: int | None, data: dict, val: dict,
                       summary: dict, log_rows: list[dict], *, training: "TrainingSettings",
                       prompts: "PromptSettings", datasets: Mapping[str, "Dataset"], preset: str,
                       scoring: dict) -> Path:
    """The trained model + its artefacts into `out` (replaced), via a staging folder beside it. `scoring`
    is `scoring_settings(...)` of the run; `training` the run's settings, `prompts` the question bank's."""
    out = Path(out)
    staging = out.with_name(f"{out.name}.staging-{os.getpid()}")
    model.save_pretrained(staging, extra={"experiment": exp.name, "stage": stage or "final", "validation": val,
                                          "train_summary": summary, "code_version": code_version("train"),
                                          "provenance": model_provenance(model), **scoring})
    if scoring["quality_adapter"]:
        copy_quality_adapter(scoring["quality_adapter"], staging)
    (staging / "templates.yaml").write_text(yaml.safe_dump(
        {k: list(v) for k, v in load_templates(prompts.templates, prompts.answer_format).raw.items()},
        sort_keys=False, width=200))
    write_log(log_rows, staging / "train_log.csv")
    plot_loss(log_rows, staging / "loss.png", f"{exp.name}: training loss")
    (staging / "README.md").write_text(model_card(exp, datasets, training, preset, model, data, val, summary,
                                                        adapted=bool(scoring["quality_adapter"])))
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    return out


def scoring_settings(extraction: dict, adapter: "Adapter | None", prompts: "PromptSettings",
                     evaluation: "EvaluationSettings") -> dict:
    """What `lmmvqa score` needs to rebuild this model's inputs from a video: the feature extraction
    settings (`extraction`: the config's `models`, `sampling` and `features` blocks as written), the
    prompt/evaluation settings and, for features of a
    quality-adapted vision encoder (`models.vision.adapted`, `adapter`), `quality_adapter`: the record of the adapter
    file the folder holds a copy of (`extraction.models.vision.adapted` then names that copy, so scoring
    needs neither the config's datasets nor the code version the adapter's own file name depends on)."""
    extraction = copy.deepcopy(extraction)
    record = None
    if adapter is not None:
        record = quality_adapter_record(adapter)
        extraction["models"]["vision"]["adapted"] = record["file"]
    return {"extraction": extraction, "quality_adapter": record, "prompts_seed": prompts.seed,
            "evaluation": as_dict(evaluation)}


def quality_adapter_record(adapter: "Adapter") -> dict:
    """The quality adapter file (`Adapter.file`) as a model folder records its copy: the
    copy's name in the folder, the adapter's hash and base vision hash (its header), the file's sha256,
    and where it was copied from."""
    from pipeline.features.encoding.quality_adapter import read_meta

    source = Path(adapter.file)
    if not source.is_file():
        raise UserError(f"{source}: the quality adapter the model's features were made with is missing "
                        "(models.vision.adapted): the model folder must hold a copy of it")
    meta = read_meta(source)
    return {"file": ADAPTER_FILE, "hash": meta.get("hash"), "base_hash": meta.get("base_hash"),
            "sha256": provenance.sha256_of(source), "source": str(source)}


def copy_quality_adapter(record: dict, folder: Path) -> Path:
    """Copy the adapter file of `record` into the model folder (readable by all, like the other outputs)."""
    target = Path(folder) / record["file"]
    shutil.copyfile(record["source"], target)
    os.chmod(target, 0o644)
    return target


def model_provenance(model) -> dict:
    """Each role's record (pipeline/core/provenance.py): the encoders' as their feature stores recorded
    them, and the LLM's: its architecture, where its weights came from and how it was trained here."""
    c = model.config
    spec = c["llm"]
    llm_conf = getattr(model.llm, "config", None)
    layers = getattr(llm_conf, "num_hidden_layers", None)
    llm = {
        "arch": getattr(llm_conf, "model_type", None) or "llama",
        "detail": f"width {c['llm_width']}" + (f", {layers} layer{'s' if layers != 1 else ''}" if layers else ""),
        "weights": (provenance.pretrained_weights(spec["source"]) if spec["source"]
                    else provenance.random_init(c["training"]["seed"])),
        "trained": "all" if c.get("train_llm") else ("lora" if c.get("lora") else "none"),
        "continued_from": (c.get("init_from") or {}).get("path"),
    }
    roles = {role: {k: (c.get(role) or {}).get(k) for k in ("arch", "detail", "weights")} for role in ("vision", "motion")}
    return {**roles, "llm": llm}


def holdout_note(exp: "Experiment", datasets: Mapping[str, "Dataset"]) -> str:
    """What the model never saw of its k-fold training data: ' (holdout fold F never used: <datasets>)',
    or for the model of a `folds: all` experiment trained on every fold, that nothing was held out;
    '' when no train selector depends on folds."""
    held = [parse_selector(s)[0] for s in exp.train if fold_dependent(datasets, s)]
    if not held:
        return ""
    if exp.holdout_fold is None:
        return " (every fold: nothing held out; the per-fold models' results say what this model is worth)"
    return f" (holdout fold {exp.holdout_fold} never used: {', '.join(held)})"


def write_log(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LOG_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in w.fieldnames})


def plot_loss(rows: list[dict], path: Path, title: str) -> None:
    """loss.png of the log rows (the report's loss figure)."""
    loss_figure(pd.DataFrame(rows, columns=LOG_COLUMNS), title).savefig(path)


def model_card(exp: "Experiment", datasets: Mapping[str, "Dataset"], training: "TrainingSettings", preset: str,
               model, data: dict, val: dict, summary: dict, adapted: bool = False) -> str:
    """README.md of a model folder: data, model, training and validation in a page (`adapted`: the folder
    holds a copy of the quality adapter its features are made with)."""
    tr = as_dict(training)
    experiment = exp.name
    roles = provenance.describe_roles(model_provenance(model))
    adapter_copy = f"`{ADAPTER_FILE}` (the quality adapter its features are made with), " if adapted else ""
    lines = [
        f"# LMM-VQA model `{experiment}`", "",
        "Video quality assessment as question answering: the vision role's key-frame tokens and one motion "
        "token per second, pooled over time, go through the spatiotemporal projector and replace the video "
        f"placeholder token (`{model.config.get('placeholder_token')}`) of the prompt; the LLM answers the quality "
        f"score (0-100, answer format `{model.answer_format.name}`: e.g. `{model.answer_format.render(63.2149)}`) "
        "or level (good / fair / poor).", "",
        "## Data", "",
        f"- train selectors: {', '.join(exp.train)}{holdout_note(exp, datasets)}",
        f"- training samples: {summary['n_train']} ({summary['n_train_videos']} videos); validation: "
        f"{summary['n_val']} samples ({val.get('n_videos', 0)} videos, seeded {tr['val_fraction']:g} of the training videos)",
        f"- videos without features (skipped): {sum(data['skipped_videos'].values())} "
        f"{json.dumps(data['skipped_videos'])}",
        *([f"- left out of training because they share `{data['excluded_shared']['column']}` with a test video "
           f"(exclude_shared): {data['excluded_shared']['videos']} videos "
           f"({', '.join(data['excluded_shared']['values'][:8])})"] if data.get("excluded_shared") else []),
        f"- prompt shards: {', '.join(data['prompt_files'])}",
        f"- feature stores: {', '.join(s for v in data['stores'].values() for s in v)}", "",
        "## Model", "",
        f"- preset `{preset}`",
        f"- vision: {roles['vision']}",
        f"- motion: {roles['motion']}",
        f"- LLM: {roles['llm']}; LLM weights saved in this folder: "
        f"{' + '.join(model.weight_parts()) or 'none (reloaded from the source)'}; dtype {model.config.get('dtype')}",
        f"- vision width {model.config['vision_width']}, {model.config['vision_tokens']} tokens per key frame, "
        f"motion dim {model.config['motion_dim']}, pooling {model.config['pooling']} -> "
        f"{model.config['vision_tokens'] + 1} visual tokens",
        f"- projector: {', '.join(f'{k} {v}' for k, v in sorted((model.config.get('projector') or {}).items()))}",
        f"- trainable parameters: {summary['trainable']:,} of {summary['total']:,} "
        f"(train_llm={model.config['train_llm']}, LoRA={'yes' if model.config.get('lora') else 'no'})",
        *([f"- continued from `{model.config['init_from']['path']}` (experiment "
           f"{model.config['init_from'].get('experiment')}): its projector and LLM weights are the starting point"]
          if model.config.get("init_from") else []),
        *([f"- an ensemble with the quality prior: prob_score = {1 - qp['weight']:g} x the model's expected score + "
           f"{qp['weight']:g} x the "
           f"score of quality adapter {qp['adapter']} on the MOS scale (a line fitted on {qp['n_videos']} training "
           f"videos; their SRCC {qp['train_srcc']:.3f})"
           + (f"; the level answer is that score's level (poor up to {qp['level_edges'][0]:.4g}, fair up to "
              f"{qp['level_edges'][1]:.4g}: the training videos' 33rd / 66th MOS percentiles)"
              if qp.get("level_edges") else "")] if (qp := model.config.get("quality_prior")) else []), "",
        "## Training", "",
        f"- {summary['steps']} optimizer steps ({summary['epochs']:.2f} epochs), batch {tr['batch_size']} x accum "
        f"{tr['grad_accum']} x {summary['world_size']} process(es), lr {tr['lr']:g} (LLM {tr['llm_lr'] or tr['lr']:g}), "
        f"warmup {tr['warmup_ratio']:g} + cosine, weight decay {tr['weight_decay']:g}, clip {tr['max_grad_norm']:g}, "
        f"seed {tr['seed']}, dtype {summary['dtype']}, device {summary['device']}",
        f"- final loss (mean of the last 10 steps): {summary['final_loss']:.4f}; wall time {summary['seconds']:.0f} s, "
        f"{summary['samples_per_s']:.1f} samples/s",
        f"- weights kept (training.select): {_selected(summary.get('selection'))}", "",
        "## Validation (greedy answers)", "",
        f"- score answers: SRCC {_fmt(val.get('srcc'))}, PLCC (raw) {_fmt(val.get('plcc_raw'))}, "
        f"valid {val.get('score_valid', 0)}, invalid {val.get('score_invalid', 0)}",
        f"- probability score: SRCC {_fmt(val.get('prob_srcc'))}",
        f"- level accuracy: {_fmt(val.get('level_accuracy'))}", "",
        "Files: `lmmvqa.json`, `projector.safetensors`, `llm/` or `adapter/`, `tokenizer/`, "
        f"{adapter_copy}`train_log.csv`, `loss.png`. "
        "Load with `pipeline.model.lmm.LMMVQA.from_pretrained(folder, device=...)`.",
    ]
    if val.get("note"):
        lines.append(f"\nNote: {val['note']}")
    return "\n".join(lines) + "\n"


def _selected(selection: dict | None) -> str:
    if not selection or selection.get("mode", "last") == "last":
        return "the last step's"
    if selection["mode"] == "best":
        return (f"the best step's by validation probability-score SRCC: step {selection.get('step')} "
                f"(SRCC {_fmt(selection.get('val_prob_srcc'))}), evaluated every {selection['every']} steps")
    return f"the average of steps {', '.join(map(str, selection.get('averaged_steps') or []))}"


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"
