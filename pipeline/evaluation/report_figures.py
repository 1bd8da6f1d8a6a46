"""The report's figures, one per (experiment, test selector): prediction vs MOS with the fitted logistic,
and the level confusion matrix; `write_png` writes any figure as a file and returns it base64-encoded for
the page. The training loss figures are the training stage's own (pipeline.training.plots)."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.levels import LEVELS
from pipeline.core.metrics import METHODS, fit_logistic, invalid_flags, logistic
from pipeline.training.plots import figure


def write_png(fig, path: Path) -> str:
    """Write `fig` as a PNG file at `path` (the plots folder) and return the same bytes base64-encoded, for
    embedding in the page."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return base64.b64encode(data).decode("ascii")


def scatter_plot(pred: pd.DataFrame, metrics: dict | None, title: str):
    """Prediction vs MOS for both scoring methods, with the fitted 4-parameter logistic."""
    fig = figure(7.4, 3.5)
    axes = fig.subplots(1, 2)
    mos = pd.to_numeric(pred["mos"], errors="coerce").to_numpy(float)
    for ax, method, col in zip(axes, METHODS, ("score", "prob_score")):
        x = pd.to_numeric(pred[col], errors="coerce").to_numpy(float) if col in pred else np.full(len(mos), np.nan)
        ok = np.isfinite(x) & np.isfinite(mos)
        if method == "text":
            ok &= ~invalid_flags(pred).to_numpy(dtype=bool)
        ax.scatter(x[ok], mos[ok], s=14, alpha=0.7, color="#1f77b4", edgecolors="none", label="videos")
        params = fit_logistic(x[ok], mos[ok]) if ok.sum() else None
        if params is not None:
            grid = np.linspace(np.nanmin(x[ok]), np.nanmax(x[ok]), 200)
            ax.plot(grid, logistic(grid, *params), color="#d62728", lw=2, label="4-parameter logistic fit")
        m = ((metrics or {}).get("methods") or {}).get(method) or {}
        label = "generated text score" if method == "text" else "probability score"
        stats_txt = ", ".join(f"{k.upper()} {m[k]:.3f}" for k in ("srcc", "plcc") if m.get(k) is not None) or "n/a"
        n_bad = int((~ok).sum())
        ax.set_title(f"{label}\n{stats_txt} (n={int(ok.sum())}" + (f", {n_bad} invalid/missing)" if n_bad else ")"),
                     fontsize=10)
        ax.set_xlabel(f"predicted ({col})")
        ax.set_ylabel("MOS (0-100)")
        ax.grid(alpha=0.3)
        if ok.sum():
            ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(title, fontsize=11)
    return fig


def confusion_plot(level: dict, title: str):
    labels = level.get("labels") or list(LEVELS)
    cm = np.asarray(level.get("confusion") or np.zeros((len(labels), len(labels))), dtype=float)
    fig = figure(3.8, 3.5)
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(cm.max(), 1))
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted level")
    ax.set_ylabel("true level")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    acc = level.get("accuracy")
    ax.set_title(f"{title}\naccuracy {acc:.3f}" if acc is not None else f"{title}\naccuracy n/a", fontsize=10)
    return fig
