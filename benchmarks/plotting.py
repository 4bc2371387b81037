"""Figures in the style of the study (matplotlib, Agg backend, modest-size PNGs)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd

from benchmarks.solvers import colormap, label, registered_solvers
from benchmarks.trials import RUN_KEY, is_diverged

DPI = 80


def _color(solver: str, rank: int):
    shades = plt.get_cmap(colormap(solver))(np.linspace(0.95, 0.45, 4))
    return shades[(int(rank) - 1) % len(shades)]


def _footnote(fig, note: str) -> None:
    if note:
        fig.text(0.01, 0.005, "\n".join(textwrap.wrap(note, 150)), fontsize=7,
                 va="bottom", ha="left", color="dimgray")


def save_figure(fig, path: Path, note: str = "") -> Path:
    _footnote(fig, note)
    fig.tight_layout(rect=(0, 0.06 if note else 0, 1, 1))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _run_label(run) -> str:
    params = json.loads(run["params"])
    text = f"{label(run['solver'])} #{int(run['rank'])}"
    if "learning_rate_init" in params:
        text += f" (lr {params['learning_rate_init']:.3g}, bs {params.get('batch_size')})"
    return text


def plot_compare(out_dir, problem, runs: pd.DataFrame, histories: pd.DataFrame,
                 budget: float, verdict: dict | None = None, *, note: str = ""
                 ) -> list[Path]:
    """Figures 6-9 with every seed: held-out and training loss (and test accuracy)
    against training time and updates. Each solver's chosen configuration is drawn
    bold, the others thin; the dashed line is the time-to-target target."""
    out_dir = Path(out_dir)
    verdict = verdict or {"solvers": {}, "target": float("nan")}
    chosen = {s: info["trial"] for s, info in verdict["solvers"].items()}
    panels = [(("eval_loss", f"held-out {problem.loss_name}"),
               ("train_set_loss", problem.loss_name.replace("test", "training")),
               "compare_loss.png", True)]
    if problem.is_classifier:
        panels.append((("eval_score", "test accuracy"), None, "compare_accuracy.png", False))
    written = []
    for top, bottom, name, log_scale in panels:
        rows = [top] + ([bottom] if bottom else [])
        fig, axes = plt.subplots(len(rows), 2, figsize=(11, 3.8 * len(rows)), squeeze=False)
        labelled = set()
        for run in runs.to_dict("records"):
            curve = histories[(histories["solver"] == run["solver"])
                              & (histories["trial"] == run["trial"])
                              & (histories["seed_index"] == run["seed_index"])]
            bold = chosen.get(run["solver"]) == run["trial"]
            key = (run["solver"], run["rank"])
            style = dict(color=_color(run["solver"], run["rank"]), lw=1.5 if bold else 0.7,
                         alpha=1.0 if bold else 0.6, marker="." if bold else None, ms=3,
                         label=None if key in labelled else _run_label(run))
            labelled.add(key)
            for row, (column, _) in enumerate(rows):
                if column not in curve:
                    continue
                axes[row, 0].plot(curve["time"], curve[column], **style)
                axes[row, 1].plot(curve["update"], curve[column], **style)
        for row, (column, ylabel) in enumerate(rows):
            axes[row, 0].axvline(budget, color="gray", lw=0.8, ls=":")
            if column == "eval_loss" and np.isfinite(verdict["target"]):
                for ax in axes[row]:
                    ax.axhline(verdict["target"], color="black", lw=0.8, ls="--")
            axes[row, 0].set_xlabel("training time (s, evaluation excluded)")
            axes[row, 1].set_xlabel("updates")
            axes[row, 1].set_xscale("symlog", linthresh=10)
            axes[row, 1].set_xlim(left=0)  # symlog's autoscale margin reaches below 0
            for ax in axes[row]:
                ax.set_ylabel(ylabel)
                if log_scale:
                    ax.set_yscale("log")
                    _cap_diverging(ax, histories, column)
                ax.grid(alpha=0.3, which="both")
        axes[0, 0].legend(fontsize=7, loc="best")
        seeds = int(runs.groupby(["solver", "trial"]).size().max())
        fig.suptitle(f"{problem.title}: best configurations per solver, {seeds} seed(s) "
                     "each\n(bold: the configuration in the verdict; dashed: the target; "
                     "loss axes end at 1.5x the worst starting loss)",
                     fontsize=10)
        written.append(save_figure(fig, out_dir / name, note))
    return written


def _cap_diverging(ax, histories: pd.DataFrame, column: str) -> None:
    """A diverging run must not squash the others: the y axis (log scale) ends at 1.5x
    the worst starting value; curves above it leave the plot."""
    if column not in histories:
        return
    values = histories[column].to_numpy(dtype=float)
    firsts = histories.sort_values("time").groupby(RUN_KEY)[column].first().to_numpy(float)
    values, firsts = values[np.isfinite(values) & (values > 0)], firsts[np.isfinite(firsts)]
    if len(values) and len(firsts):
        ax.set_ylim(0.8 * values.min(), 1.5 * max(firsts.max(), values.min()))


def plot_tune_losses(out_dir, problem, *, note: str = "") -> Path | None:
    """Figure 5: every search trial's validation loss, sorted, per solver; diverged or
    failed trials are drawn as crosses at the top edge, with their trial numbers."""
    out_dir = Path(out_dir)
    frames = {s: out_dir / f"tune_{s}.csv" for s in registered_solvers()}
    frames = {s: pd.read_csv(p, on_bad_lines="skip") for s, p in frames.items() if p.is_file()}
    if not frames:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    finite_all = np.concatenate([f["val_loss"].to_numpy(dtype=float) for f in frames.values()])
    finite_all = finite_all[np.isfinite(finite_all)]
    top = float(finite_all.max()) * 1.5 if finite_all.size else 1.0
    for solver, trials in frames.items():
        bad = np.array([is_diverged(row) for row in trials.to_dict("records")], dtype=bool)
        losses = trials["val_loss"].to_numpy(dtype=float)
        finite = np.isfinite(losses)
        order = np.argsort(losses[finite])
        sorted_losses, sorted_bad = losses[finite][order], bad[finite][order]
        color = _color(solver, 1)
        xs = np.arange(1, len(sorted_losses) + 1)
        ax.plot(xs, sorted_losses, marker="o", ms=3, color=color,
                label=f"{label(solver)} ({len(trials)} trials"
                      + (f", {int(bad.sum())} diverged/failed" if bad.any() else "") + ")")
        # Diverged trials: a cross on the curve (finite loss: the weights before the
        # divergence were kept) or at the top edge (no finite loss), with the trial number.
        marked = [(x, y, t) for x, y, t, b in zip(xs, sorted_losses,
                                                  trials["trial"][finite].to_numpy()[order],
                                                  sorted_bad) if b]
        extra = np.arange(len(sorted_losses) + 1, len(trials) + 1)
        marked += [(x, top, t) for x, t in zip(extra, trials["trial"][~finite])]
        for x, y, trial in marked:
            ax.plot([x], [y], ls="none", marker="x", ms=7, color=color)
            ax.annotate(str(int(trial)), (x, y), textcoords="offset points",
                        xytext=(0, 5), ha="center", fontsize=6, color=color)
    ax.set_yscale("log")
    ax.set_ylim(top=top * 1.4)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("trials sorted by validation loss (x: diverged/failed, trial number)")
    ax.set_ylabel(problem.loss_name.replace("test", "validation"))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(f"{problem.title}: Bayesian optimisation results", fontsize=10)
    return save_figure(fig, out_dir / "tune_losses.png", note)


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
    run_color = lambda key: _color(*key)  # noqa: E731
    run_label = lambda key: f"{label(key[0])} #{int(key[1])}"  # noqa: E731

    fig2 = [points[points["experiment"] == e] for e in ("fig2_time", "fig2_updates")]
    if any(len(f) for f in fig2):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        titles = [f"time budget {time_budget:g} s", f"update budget {update_budget} updates"]
        for ax, frame, title in zip(axes, fig2, titles):
            if len(frame):
                lines(ax, frame, "batch_size", ["solver", "config"], run_label, run_color)
                ax.set_yscale("log")
            ax.set_xlabel("batch size")
            ax.set_ylabel(problem.loss_name)
            ax.set_title(title, fontsize=9)
            ax.legend(fontsize=7)
        fig.suptitle(f"{problem.title}: final test loss against batch size (Figure 2; "
                     "K-FAC's best configurations and each other solver's best)",
                     fontsize=10)
        written.append(save_figure(fig, out_dir / "batch_size_fig2.png", note))
    fig2 = [f[f["solver"] == "kfac"] for f in fig2]  # Figure 3 right: K-FAC's inversions

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
        written.append(save_figure(fig, out_dir / "batch_size_fig3.png", note))

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
        written.append(save_figure(fig, out_dir / "batch_size_fig4.png", note))
    return written
