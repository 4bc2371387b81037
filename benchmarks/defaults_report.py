"""Verdicts, ``table.md``, ``verdict.json``, ``scores.png`` and ``curves.png`` of ``defaults``.

The rules are stated in :mod:`benchmarks.defaults`; :func:`compare_medians` and
:func:`cell_verdict` are pure functions of the runs (unit-tested on hand-made numbers).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.compare import spread
from benchmarks.records import code_version, command_line
from benchmarks.solvers import is_first_order, registered_solvers
from benchmarks.tabular import method_label, tabular_methods

#: Tabular bars: K-FAC's median score at most SCORE_BAR below the better of skkfac-Adam
#: and scikit-learn's MLP; its median fit time at most TIME_BAR times the MLP's.
SCORE_BAR, TIME_BAR = 0.01, 3.0
SCORE_REFERENCES = ("adam", "sklearn_mlp")
TIME_REFERENCE = "sklearn_mlp"


# -- verdicts (pure) --------------------------------------------------------------------------
def _better(a: float, b: float, higher: bool) -> bool:
    return a > b if higher else a < b


def compare_medians(kfac: dict, other: dict, higher: bool) -> str:
    """'ahead', 'behind' or 'level' of two :func:`~benchmarks.compare.spread` dicts.

    Ahead: K-FAC's median is better and its worst seed is better than the other's
    median; behind: the reverse; otherwise level.
    """
    worst = "min" if higher else "max"
    if _better(kfac["median"], other["median"], higher) and _better(
            kfac[worst], other["median"], higher):
        return "ahead"
    if _better(other["median"], kfac["median"], higher) and _better(
            other[worst], kfac["median"], higher):
        return "behind"
    return "level"


def tabular_bars(scores: dict, times: dict) -> dict:
    """The bars of a tabular cell: K-FAC's median score within SCORE_BAR of the better
    median of Adam and sklearn's MLP, its median fit time at most TIME_BAR x the MLP's
    (``pass``: None when a method has no runs)."""
    kfac = scores.get("kfac", {"n": 0})
    refs = [m for m in SCORE_REFERENCES if scores.get(m, {"n": 0})["n"]]
    reference = max(refs, key=lambda m: scores[m]["median"], default=None)
    score_bar = {"reference": reference, "kfac": kfac.get("median", math.nan),
                 "target": math.nan, "pass": None}
    if reference and kfac["n"]:
        score_bar["target"] = scores[reference]["median"]
        score_bar["pass"] = bool(kfac["median"] >= scores[reference]["median"] - SCORE_BAR
                                 - 1e-12)  # "within": the rounding of 0.01 must not fail it
    time_bar = {"reference": TIME_REFERENCE, "ratio": math.nan, "pass": None}
    if times.get("kfac", {"n": 0})["n"] and times.get(TIME_REFERENCE, {"n": 0})["n"]:
        ratio = times["kfac"]["median"] / max(times[TIME_REFERENCE]["median"], 1e-12)
        time_bar["ratio"], time_bar["pass"] = float(ratio), bool(ratio <= TIME_BAR + 1e-12)
    return {"score": score_bar, "time": time_bar}


def cell_verdict(runs: pd.DataFrame, *, tabular: bool) -> dict:
    """Statistics and verdict of one cell's runs (``runs.csv`` rows)."""
    higher = bool(runs["higher_is_better"].iloc[0])
    order = {m: i for i, m in enumerate(tabular_methods())}
    methods = sorted(runs["method"].unique(), key=lambda m: order.get(m, len(order)))
    groups = {m: runs[runs["method"] == m] for m in methods}
    scores = {m: spread(g["score"]) for m, g in groups.items()}
    times = {m: spread(g["fit_seconds"]) for m, g in groups.items()}
    pick = max if higher else min
    first_order = [m for m in methods if m in registered_solvers() and is_first_order(m)
                   and scores[m]["n"]]
    best = pick(first_order, key=lambda m: scores[m]["median"], default=None)
    kfac = scores.get("kfac", {"n": 0})
    budgets = runs["budget"].dropna() if "budget" in runs else pd.Series(dtype=float)
    result = {"kind": str(runs["kind"].iloc[0]), "score_name": str(runs["score_name"].iloc[0]),
              "higher_is_better": higher, "tabular": tabular, "best_first_order": best,
              "budget": float(budgets.max()) if len(budgets) else None,
              "verdict": compare_medians(kfac, scores[best], higher)
              if best and kfac["n"] else "n/a",
              "methods": {m: {"score": scores[m], "fit_seconds": times[m],
                              "updates": spread(groups[m]["updates"])["median"],
                              "stop_reasons": sorted(set(groups[m]["stop_reason"].dropna()
                                                         .astype(str))),
                              "convergence_warnings": int(groups[m]["convergence_warnings"]
                                                          .fillna(0).sum()),
                              "max_eval_jump": spread(groups[m]["max_eval_jump"])["max"]}
                          for m in methods}}
    if tabular:
        result["bars"] = tabular_bars(scores, times)
    return result


def advantage(kfac: float, reference: float, higher: bool) -> float:
    """K-FAC's advantage: score difference (higher is better) or relative loss reduction."""
    return kfac - reference if higher else (reference - kfac) / abs(reference)


# -- header ----------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_header(argv, threads: int, load_start) -> dict:
    import torch

    return {"command": command_line(argv) if argv is not None
            else "run_defaults() called from Python",
            "date": f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S}", "commit": code_version(),
            "cpu": f"{cpu_model()} ({os.cpu_count()} logical cores)",
            "threads": f"{threads} per fit (n_threads; torch.get_num_threads() = "
                       f"{torch.get_num_threads()})",
            "load_start": [round(v, 2) for v in load_start],
            "load_end": [round(v, 2) for v in os.getloadavg()]}


# -- outputs ---------------------------------------------------------------------------------
def _num(value: float, digits: int = 4) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def _range(stat: dict) -> str:
    if not stat["n"]:
        return "–"
    low, high = _num(stat["min"]), _num(stat["max"])
    return f"{_num(stat['median'])} [{low}, {high}]" if stat["min"] < 0 else \
        f"{_num(stat['median'])} [{low}-{high}]"


def _pass(flag) -> str:
    return "n/a" if flag is None else "pass" if flag else "FAIL"


def verdict_sentence(name: str, info: dict) -> str:
    methods, best = info["methods"], info["best_first_order"]
    if info["verdict"] == "n/a":
        return f"{name}: no verdict (K-FAC or a first-order solver has no runs)"
    relation = {"ahead": "ahead of", "behind": "behind", "level": "level with"}
    text = (f"{name}: K-FAC {relation[info['verdict']]} {method_label(best)} (the best "
            f"first-order skkfac solver), {info['score_name']} median "
            f"{_num(methods['kfac']['score']['median'])} against "
            f"{_num(methods[best]['score']['median'])}")
    bars = info.get("bars")
    if bars:
        score, fit = bars["score"], bars["time"]
        text += (f"; bar 'within {SCORE_BAR:g} of the better of Adam and the MLP' "
                 f"({method_label(score['reference']) if score['reference'] else '–'} "
                 f"{_num(score['target'])}): {_pass(score['pass'])}; bar 'fit time "
                 f"<= {TIME_BAR:g}x the MLP's' ({_num(fit['ratio'], 2)}x): "
                 f"{_pass(fit['pass'])}")
    return text


def markdown(verdicts: dict, header: dict, skipped: dict) -> str:
    start, end = ("/".join(f"{v:.2f}" for v in header[k]) for k in ("load_start", "load_end"))
    lines = ["# Every solver at its defaults (`python -m benchmarks defaults`)", "",
             f"- command: `{header['command']}`",
             f"- date: {header['date']}; skkfac commit: {header['commit']}",
             f"- CPU: {header['cpu']}; torch threads: {header['threads']}",
             f"- load average (1/5/15 min): {start} at the start, {end} at the end", "",
             "Median [min-max] over seeds (big cells) or train/test splits, one seed "
             "each (tabular cells; the *seeds* column counts them). Verdict: K-FAC "
             "against the best first-order skkfac solver (by median): *ahead* when "
             "K-FAC's median is better and its worst seed beats the other's median, "
             "*behind* in the reverse case, else "
             f"*level*. Tabular bars: K-FAC's median within {SCORE_BAR:g} of the better "
             f"of skkfac-Adam and sklearn's MLP; its median fit time <= {TIME_BAR:g}x "
             "the MLP's. fit s: median seconds of the whole `fit` call (big cells: the "
             "learning curve's evaluations included); max eval jump: largest relative rise "
             "of the held-out loss between evaluations after the first 20 s of training "
             "(a quarter of the budget where that is shorter: --quick).", "",
             "## Summary", "",
             "| cell | score | K-FAC | best first-order | verdict | score bar | time bar |",
             "|---|---|---|---|---|---|---|"]
    for name, info in verdicts.items():
        best, methods = info["best_first_order"], info["methods"]
        bars = info.get("bars") or {"score": {"pass": None}, "time": {"pass": None}}
        lines.append(
            f"| {name} | {info['score_name']} | "
            f"{_range(methods['kfac']['score']) if 'kfac' in methods else '–'} | "
            + (f"{method_label(best)} {_range(methods[best]['score'])}" if best else "–")
            + f" | {info['verdict']} | "
            + (f"{_pass(bars['score']['pass'])} | {_pass(bars['time']['pass'])} |"
               if info["tabular"] else "– | – |"))
    for name, info in verdicts.items():
        budget = info["budget"]
        lines += ["", f"## {name} ({info['kind']}, "
                      + (f"{budget:g} s per run)" if budget else "fitted as a user would)"),
                  "", "| method | seeds | " + info["score_name"] + " | fit s (median) | updates | "
                  "stop reasons | convergence warnings | max eval jump (worst seed) |",
                  "|---|---|---|---|---|---|---|---|"]
        for method, stats in info["methods"].items():
            lines.append(f"| {method_label(method)} | {stats['score']['n']} | "
                         f"{_range(stats['score'])} | "
                         f"{_num(stats['fit_seconds']['median'], 3)} | "
                         f"{_num(stats['updates'])} | {', '.join(stats['stop_reasons']) or '–'}"
                         f" | {stats['convergence_warnings']} | "
                         f"{_num(stats['max_eval_jump'])} |")
        lines += ["", verdict_sentence(name, info)]
    if skipped:
        lines += ["", "## Skipped cells (data missing)", ""]
        lines += [f"- {name}: {reason}" for name, reason in skipped.items()]
    return "\n".join(lines) + "\n"


def plot_curves(path, history: pd.DataFrame, cells: list[str]) -> Path | None:
    """Held-out loss against training time on the big cells: per method the median over
    seeds at each evaluation (they happen at the same training times), the seeds' range
    shaded."""
    from benchmarks.plotting import plt, save_figure
    from benchmarks.solvers import colormap

    cells = [c for c in cells if c in set(history["cell"])]
    if not cells:
        return None
    fig, axes = plt.subplots(1, len(cells), figsize=(4.2 * len(cells), 3.4), squeeze=False)
    for ax, cell in zip(axes[0], cells):
        rows = history[history["cell"] == cell]
        for method, runs in rows.groupby("method", sort=False):
            # Evaluation k of every seed: the median time and the loss's spread.
            runs = runs.assign(k=runs.groupby("seed").cumcount())
            by_k = runs.groupby("k").agg(time=("time", "median"),
                                         median=("eval_loss", "median"),
                                         low=("eval_loss", "min"), high=("eval_loss", "max"))
            color = plt.get_cmap(colormap(method))(0.75)
            ax.plot(by_k["time"], by_k["median"], color=color, label=method_label(method))
            ax.fill_between(by_k["time"], by_k["low"], by_k["high"], color=color, alpha=0.2)
        ax.set_yscale("log")
        ax.set_title(cell, fontsize=10)
        ax.set_xlabel("training seconds")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("held-out loss (median over seeds)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Every solver at its defaults (and the study's K-FAC where it ran): held-out "
                 "loss during training", fontsize=11)
    return save_figure(fig, Path(path))


def plot_scores(path, verdicts: dict) -> Path | None:
    """K-FAC's advantage over the best first-order skkfac solver and the references,
    per cell (big problems left, tabular sets right); symlog axes, 0 = level."""
    from benchmarks.plotting import plt, save_figure

    panels = [(g, [n for n, v in verdicts.items() if v["tabular"] == (g == "tabular")
                   and "kfac" in v["methods"]]) for g in ("big", "tabular")]
    panels = [(g, names) for g, names in panels if names]
    if not panels:
        return None
    height = max(3.0, 0.35 * max(len(names) for _, names in panels) + 1.8)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), height),
                             squeeze=False)
    styles = {"first-order": ("tab:blue", "o"), "sklearn_mlp": ("tab:orange", "s"),
              "sklearn_hgb": ("tab:green", "^")}
    for ax, (group, names) in zip(axes[0], panels):
        for y, name in enumerate(names):
            info = verdicts[name]
            kfac = info["methods"]["kfac"]["score"]
            refs = {"first-order": info["best_first_order"], "sklearn_mlp": "sklearn_mlp",
                    "sklearn_hgb": "sklearn_hgb"}
            for offset, (key, method) in zip((-0.2, 0.0, 0.2), refs.items()):
                if method not in info["methods"]:
                    continue
                ref = info["methods"][method]["score"]["median"]
                values = [advantage(kfac[k], ref, info["higher_is_better"])
                          for k in ("median", "min", "max")]
                color, marker = styles[key]
                ax.errorbar(values[0], y + offset, fmt=marker, color=color, ms=5,
                            xerr=[[values[0] - min(values[1:])], [max(values[1:]) - values[0]]],
                            label=("vs best first-order skkfac solver" if key == "first-order"
                                   else f"vs {method_label(method)}"))
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels([f"{n} ({verdicts[n]['score_name'].split()[-1]})"
                            for n in names], fontsize=8)
        ax.set_ylim(len(names) - 0.4, -0.6)  # first cell on top, markers off the edges
        ax.axvline(0, color="black", lw=0.8)
        if group == "tabular":
            ax.axvspan(-SCORE_BAR, 0, color="gray", alpha=0.2, label=f"within {SCORE_BAR:g}")
        ax.set_xscale("symlog", linthresh=0.01)
        reach = max([0.05, *(abs(v) for line in ax.lines for v in line.get_xdata()
                             if math.isfinite(v))])
        ax.set_xlim(-1.5 * reach, 1.5 * reach)
        ax.grid(alpha=0.3, axis="x", which="both")
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=7, loc="best")
        ax.set_xlabel("K-FAC's advantage (> 0: K-FAC better; bars: its seeds' range)\n"
                      + ("MSE: relative reduction (ref - K-FAC) / ref; accuracy: difference"
                         if group == "big" else "score difference (R² or accuracy)"),
                      fontsize=8)
        ax.set_title("big problems, fixed time budget" if group == "big"
                     else "tabular sets, fitted as a user would", fontsize=9)
    fig.suptitle("K-FAC at its defaults against the other methods at theirs "
                 "(medians over seeds)", fontsize=10)
    return save_figure(fig, Path(path))


def write_results(out, runs: pd.DataFrame, header: dict, *, cell_order=(), skipped=None,
                  history: pd.DataFrame | None = None, progress=print) -> dict:
    """Verdicts of every cell in ``runs`` -> table.md, verdict.json, scores.png, stdout;
    the big cells' learning curves in ``history`` -> curves.png.

    Cells are listed in ``cell_order`` (others after them, by name)."""
    out = Path(out)
    skipped = skipped or {}
    order = {name: i for i, name in enumerate(cell_order)}
    names = sorted(runs["cell"].unique(), key=lambda n: (order.get(n, len(order)), n))
    verdicts = {name: cell_verdict(runs[runs["cell"] == name],
                                   tabular=_is_tabular(runs[runs["cell"] == name]))
                for name in names}
    counts = {v: sum(1 for i in verdicts.values() if i["verdict"] == v)
              for v in ("ahead", "level", "behind", "n/a")}
    bars = [i["bars"] for i in verdicts.values() if i["tabular"]]
    summary = {"verdicts": counts, "tabular_cells": len(bars),
               "score_bar_passes": sum(1 for b in bars if b["score"]["pass"]),
               "time_bar_passes": sum(1 for b in bars if b["time"]["pass"])}
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(markdown(verdicts, header, skipped))
    (out / "verdict.json").write_text(json.dumps(
        {"header": header, "summary": summary, "cells": verdicts, "skipped": skipped},
        indent=2, default=_json_default) + "\n")
    figure = plot_scores(out / "scores.png", verdicts)
    if history is not None and len(history):
        curves = plot_curves(out / "curves.png", history, [n for n in names
                                                             if not verdicts[n]["tabular"]])
        figure = f"{figure}, {curves}" if figure and curves else figure or curves
    print("\n".join(["", "Summary (K-FAC against the best first-order skkfac solver):",
                     *(verdict_sentence(n, i) for n, i in verdicts.items()),
                     *(f"{n}: skipped, data missing" for n in skipped),
                     f"verdicts: {counts['ahead']} ahead, {counts['level']} level, "
                     f"{counts['behind']} behind"
                     + (f"; tabular bars passed: score {summary['score_bar_passes']}/"
                        f"{len(bars)}, time {summary['time_bar_passes']}/{len(bars)}"
                        if bars else "")]), flush=True)
    progress(f"defaults: wrote {out / 'table.md'}, {out / 'verdict.json'}"
             + (f", {figure}" if figure else ""))
    return {"cells": verdicts, "summary": summary, "skipped": skipped, "figure": figure}


def _is_tabular(runs: pd.DataFrame) -> bool:
    """Tabular cells are fitted without a time budget."""
    return bool(runs["budget"].isna().all())


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
