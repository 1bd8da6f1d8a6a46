"""The training loss figure, one drawing for the model folder's `loss.png` (pipeline/training/model_folder.py)
and the report (pipeline/evaluation/report.py): the loss of every optimizer step, its moving mean (window
len / 20, at least 2) once there are 10 steps, a log loss axis when the loss spans more than 20x,
and the learning rate on a second axis. Figures are `matplotlib.figure.Figure`s (no pyplot: no
global state, no GUI backend)."""
from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
from matplotlib.figure import Figure

LOSS_COLOR, LR_COLOR = "#1f77b4", "#ff7f0e"


def figure(w: float, h: float) -> Figure:
    """A figure for the report and the model folder (no pyplot: no global state, no GUI backend)."""
    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def moving_mean(loss: pd.Series) -> pd.Series:
    """The smoothed loss curve (the raw loss under 10 steps)."""
    if len(loss) < 10:
        return loss
    return loss.rolling(max(len(loss) // 20, 2), min_periods=1).mean()


def _axes(fig: Figure, title: str):
    ax = fig.subplots()
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return ax


def _columns(log) -> tuple[pd.Series, pd.Series]:
    return pd.to_numeric(log["step"], errors="coerce"), pd.to_numeric(log["loss"], errors="coerce")


def loss_figure(log: pd.DataFrame, title: str) -> Figure:
    """One run's training loss (columns step, loss and optionally lr, as in train_log.csv)."""
    fig = figure(7, 3.6)
    step, loss = _columns(log)
    ax = _axes(fig, title)
    ax.plot(step, loss, color=LOSS_COLOR, lw=1, alpha=0.5, label="loss")
    if len(loss) >= 10:
        ax.plot(step, moving_mean(loss), color=LOSS_COLOR, lw=2, label="loss (moving mean)")
    if (loss > 0).all() and loss.max() / max(loss.min(), 1e-12) > 20:
        ax.set_yscale("log")
    if "lr" in log:
        ax2 = ax.twinx()
        ax2.plot(step, pd.to_numeric(log["lr"], errors="coerce"), color=LR_COLOR, lw=1, label="learning rate")
        ax2.set_ylabel("learning rate", color=LR_COLOR)
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax.legend(fontsize=8, loc="upper right")
    return fig


def fold_loss_figure(logs: Mapping[object, pd.DataFrame], title: str) -> Figure:
    """The training loss of every fold of an experiment, one moving-mean curve per fold."""
    fig = figure(7, 3.6)
    ax = _axes(fig, title)
    positive = True
    for fold, log in logs.items():
        step, loss = _columns(log)
        positive &= bool((loss > 0).all())
        ax.plot(step, moving_mean(loss), lw=1.5, label=f"fold {fold}")
    if positive:
        ax.set_yscale("log")
    ax.legend(fontsize=8, loc="upper right")
    return fig
