"""Figures in the style of the study (matplotlib, Agg backend, modest-size PNGs)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

DPI = 80
KFAC_COLORS = plt.get_cmap("Reds")(np.linspace(0.95, 0.45, 4))
SGD_COLORS = plt.get_cmap("Blues")(np.linspace(0.95, 0.45, 4))
LABELS = {"kfac": "K-FAC", "sgd": "SGD"}


def _color(solver: str, rank: int):
    colors = KFAC_COLORS if solver == "kfac" else SGD_COLORS
    return colors[(int(rank) - 1) % len(colors)]


def _footnote(fig, note: str) -> None:
    if note:
        fig.text(0.01, 0.005, "\n".join(textwrap.wrap(note, 150)), fontsize=7,
                 va="bottom", ha="left", color="dimgray")


def _save(fig, path: Path, note: str = "") -> Path:
    _footnote(fig, note)
    fig.tight_layout(rect=(0, 0.06 if note else 0, 1, 1))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _run_label(run) -> str:
    params = json.loads(run["params"])
    text = f"{LABELS[run['solver']]} #{int(run['rank'])}"
    if "learning_rate_init" in params:
        text += f" (lr {params['learning_rate_init']:.3g}, bs {params.get('batch_size')})"
    return text


def plot_compare(out_dir, problem, runs: pd.DataFrame, histories: pd.DataFrame,
                 budget: float, *, note: str = "") -> list[Path]:
    """Figures 6-9: test loss (and accuracy) against training time and updates."""
    out_dir = Path(out_dir)
    panels = [("eval_loss", problem.loss_name, "compare_loss.png", True)]
    if problem.is_classifier:
        panels.append(("eval_score", "test accuracy", "compare_accuracy.png", False))
    written = []
    for column, ylabel, name, log_scale in panels:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for run in runs.to_dict("records"):
            curve = histories[(histories["solver"] == run["solver"])
                              & (histories["rank"] == run["rank"])]
            style = dict(color=_color(run["solver"], run["rank"]), lw=1.4,
                         marker=".", ms=3, label=_run_label(run))
            axes[0].plot(curve["time"], curve[column], **style)
            axes[1].plot(curve["update"], curve[column], **style)
        axes[0].axvline(budget, color="gray", lw=0.8, ls=":")
        axes[0].set_xlabel("training time (s, evaluation excluded)")
        axes[1].set_xlabel("updates")
        axes[1].set_xscale("symlog", linthresh=10)
        for ax in axes:
            ax.set_ylabel(ylabel)
            if log_scale:
                ax.set_yscale("log")
            ax.grid(alpha=0.3, which="both")
        axes[0].legend(fontsize=7, loc="best")
        per_solver = runs.groupby("solver").size().max()
        fig.suptitle(f"{problem.title}: {per_solver} best configurations per solver, "
                     "full test set", fontsize=10)
        written.append(_save(fig, out_dir / name, note))
    return written


def plot_tune_losses(out_dir, problem, *, note: str = "") -> Path | None:
    """Figure 5: every search trial's validation loss, sorted, per solver."""
    out_dir = Path(out_dir)
    frames = {s: out_dir / f"tune_{s}.csv" for s in ("kfac", "sgd")}
    frames = {s: pd.read_csv(p, on_bad_lines="skip") for s, p in frames.items() if p.is_file()}
    if not frames:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for solver, trials in frames.items():
        losses = np.sort(trials["val_loss"].to_numpy(dtype=float))
        ax.plot(np.arange(1, len(losses) + 1), losses, marker="o", ms=3,
                color=_color(solver, 1), label=f"{LABELS[solver]} ({len(losses)} trials)")
    ax.set_yscale("log")
    ax.set_xlabel("trials sorted by validation loss (not chronological)")
    ax.set_ylabel(problem.loss_name.replace("test", "validation"))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(f"{problem.title}: Bayesian optimisation results", fontsize=10)
    return _save(fig, out_dir / "tune_losses.png", note)


def plot_batch_size(out_dir, problem, points: pd.DataFrame, *, note: str = "",
                    time_budget: float | None = None, update_budget: int | None = None,
                    artificial_updates: int | None = None, real_batch: int | None = None
                    ) -> list[Path]:
    """Figures 2, 3 and 4 from the ``batch_size.csv`` points."""
    out_dir = Path(out_dir)
    written = []

    def lines(ax, frame, x, group, label_fmt, color_fn, y="test_loss"):
        for key, sub in frame.groupby(group):
            sub = sub.sort_values(x)
            ax.plot(sub[x], sub[y], marker="o", ms=3, color=color_fn(key),
                    label=label_fmt(key))
        ax.set_xscale("log")
        ax.grid(alpha=0.3, which="both")

    config_color = lambda rank: _color("kfac", rank)  # noqa: E731
    config_label = lambda rank: f"K-FAC config #{int(rank)}"  # noqa: E731

    fig2 = [points[points["experiment"] == e] for e in ("fig2_time", "fig2_updates")]
    if any(len(f) for f in fig2):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        titles = [f"time budget {time_budget:g} s", f"update budget {update_budget} updates"]
        for ax, frame, title in zip(axes, fig2, titles):
            if len(frame):
                lines(ax, frame, "batch_size", "config", config_label, config_color)
                ax.set_yscale("log")
            ax.set_xlabel("batch size")
            ax.set_ylabel(problem.loss_name)
            ax.set_title(title, fontsize=9)
            ax.legend(fontsize=7)
        fig.suptitle(f"{problem.title}: final test loss against batch size (Figure 2)",
                     fontsize=10)
        written.append(_save(fig, out_dir / "batch_size_fig2.png", note))

    fig3 = points[points["experiment"] == "fig3_lr"]
    if len(fig3) or len(fig2[0]):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        if len(fig3):
            rates = sorted(fig3["learning_rate_init"].unique())
            cmap = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(len(rates), 1)))
            colors = dict(zip(rates, cmap))
            lines(axes[0], fig3, "batch_size", "learning_rate_init",
                  lambda lr: f"lr {lr:.3g}", lambda lr: colors[lr])
            axes[0].set_yscale("log")
        axes[0].set_xlabel("batch size")
        axes[0].set_ylabel(problem.loss_name)
        axes[0].set_title(f"best K-FAC configuration at several learning rates, "
                          f"{time_budget:g} s", fontsize=9)
        axes[0].legend(fontsize=7)
        if len(fig2[0]):
            lines(axes[1], fig2[0], "batch_size", "config", config_label, config_color,
                  y="inverse_fraction")
        axes[1].set_xlabel("batch size")
        axes[1].set_ylabel("fraction of training time inverting")
        axes[1].set_title("time_inverse / training time (history_)", fontsize=9)
        axes[1].legend(fontsize=7)
        fig.suptitle(f"{problem.title}: learning rate x batch size, inversion share "
                     "(Figure 3)", fontsize=10)
        written.append(_save(fig, out_dir / "batch_size_fig3.png", note))

    fig4 = [points[points["experiment"] == e] for e in ("fig4_time", "fig4_updates")]
    if any(len(f) for f in fig4):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        titles = [f"time budget {time_budget:g} s",
                  f"update budget {artificial_updates} updates"]
        for ax, frame, title in zip(axes, fig4, titles):
            if len(frame):
                lines(ax, frame, "artificial_batch_size", "config", config_label,
                      config_color)
                ax.set_yscale("log")
            ax.set_xlabel(f"artificial batch size (real batch {real_batch})")
            ax.set_ylabel(problem.loss_name)
            ax.set_title(title, fontsize=9)
            ax.legend(fontsize=7)
        fig.suptitle(f"{problem.title}: final test loss against artificial batch size "
                     "(Figure 4)", fontsize=10)
        written.append(_save(fig, out_dir / "batch_size_fig4.png", note))
    return written
