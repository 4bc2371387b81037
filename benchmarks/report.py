"""``report``: gather every result under ``--out`` into ``REPORT.md``.

Reads what the other sub-commands wrote (``<out>/<problem>/``, ``<out>/time_budget/``,
``<out>/commands.txt``) and writes ``<out>/REPORT.md``: a summary of the verdicts, the
best configurations next to the study's Tables 1-3, per-problem tables and figures, the
time-budget check, and the exact commands (with start time, duration and status) that
produced the files. Folders below ``<out>`` holding their own ``REPORT.md`` (e.g. a
``quick`` run) are linked.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.compare import BUDGET_CHANGE, BUDGET_FRACTION, FLOOR_FRACTION, FLOOR_TOLERANCE
from benchmarks.problems import PROBLEMS
from benchmarks.records import read_commands, read_settings
from benchmarks.solvers import label, registered_solvers
from benchmarks.trials import is_diverged

FIGURES = [("tune_losses.png", "Search results, sorted (cf. the study's Figure 5)"),
           ("compare_loss.png", "Held-out (top) and training (bottom) loss against "
                                "training time and updates (cf. Figures 6, 7, 9)"),
           ("compare_accuracy.png", "Test accuracy (cf. Figure 8)"),
           ("batch_size_fig2.png", "Final test loss against batch size (cf. Figure 2)"),
           ("batch_size_fig3.png", "Learning rate x batch size; share of time inverting "
                                   "(cf. Figure 3)"),
           ("batch_size_fig4.png", "Artificial batch size at a small real batch "
                                   "(cf. Figure 4)")]


PROTOCOL = (
    "How to read it. Each solver's best search trials are retrained with several seeds "
    "on all training rows; held-out loss is on the full test set, training loss on the "
    "full training set (the optimiser's objective). Cells give median [min-max] over "
    "seeds of each solver's chosen configuration (lowest median final held-out loss). "
    "A solver wins only when its spread lies below every other solver's; otherwise: "
    "*no winner*. *Floor-limited*: every run of every solver was within "
    f"{FLOOR_TOLERANCE:.0%} of its final held-out loss before {FLOOR_FRACTION:.0%} of "
    "the budget, so the budget, not the solver, decides. *Time to target* (as in "
    "MLCommons AlgoPerf): training seconds to reach the best first-order solver's "
    "median final held-out loss (median over the runs that reached it). *Budget "
    f"rule*: the budget is long enough when that solver's held-out loss changes by less "
    f"than {BUDGET_CHANGE:.0%} over the last {BUDGET_FRACTION:.0%} of the budget.")


def _num(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _problem_dirs(out: Path):
    return [(PROBLEMS[p.name], p) for p in sorted(out.iterdir())
            if p.is_dir() and p.name in PROBLEMS and any(p.iterdir())]


def _trials(folder: Path, solver: str) -> pd.DataFrame:
    path = folder / f"tune_{solver}.csv"
    return pd.read_csv(path, on_bad_lines="skip") if path.is_file() else pd.DataFrame()


def _solvers_in(folder: Path) -> list[str]:
    """Solvers with search results in ``folder``: the registered ones first, in order."""
    found = [p.stem[len("tune_"):] for p in sorted(folder.glob("tune_*.csv"))]
    known = [s for s in registered_solvers() if s in found]
    return known + [s for s in found if s not in known]


def _verdict(folder: Path) -> dict | None:
    path = folder / "verdict.json"
    if not path.is_file():
        return None
    verdict = json.loads(path.read_text())
    return verdict if isinstance(verdict, dict) and "solvers" in verdict else None


def _verdict_text(verdict: dict, measure: str) -> str:
    if measure == "held-out loss" and verdict["floor_limited"]:
        return "floor-limited"
    result = verdict["verdicts"][measure]
    return label(result["winner"]) if result["winner"] else "no winner"


def _summary_row(problem, folder: Path) -> dict:
    solvers = _solvers_in(folder)
    settings = next((read_settings(folder / f"tune_{s}.json") for s in solvers), {})
    compare = read_settings(folder / "compare.json")
    row = {"Problem": problem.name,
           "Data": settings.get("dataset") or compare.get("dataset", "?"),
           "Search (trials x s)": "; ".join(
               f"{label(s)} {len(_trials(folder, s))} x "
               f"{read_settings(folder / f'tune_{s}.json').get('max_time', '?')}"
               for s in solvers) or "–",
           "Compare budget": f"{compare['max_time']} s" if compare else "–"}
    verdict = _verdict(folder)
    if verdict:
        for solver, info in verdict["solvers"].items():
            stat = info["held-out loss"]
            row[f"held-out {label(solver)}"] = (
                f"{_num(stat['median'])} [{_num(stat['min'])}-{_num(stat['max'])}]")
        row["verdict (held-out)"] = _verdict_text(verdict, "held-out loss")
        row["verdict (training)"] = _verdict_text(verdict, "training loss")
        row["time to target"] = "; ".join(
            f"{label(s)} " + ("never" if not info["time_to_target"]["reached"] else
                              f"{info['time_to_target']['median']:.3g} s")
            for s, info in verdict["solvers"].items())
        rule = verdict["budget_rule"]
        row["budget rule"] = ("–" if not isinstance(rule["change"], float)
                              or not math.isfinite(rule["change"]) else
                              f"{'holds' if rule['holds'] else 'fails'} "
                              f"({100 * rule['change']:.1f} %)")
    return row


def _markdown(frame: pd.DataFrame) -> str:
    frame = frame.fillna("–").astype(str)
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _study_comparison(problem, folder: Path) -> str:
    """Our best search trial per solver next to the study's best (Tables 1-3)."""
    if not problem.study:
        return ""
    rows = []
    runs_path = folder / "compare_runs.csv"
    runs = pd.read_csv(runs_path) if runs_path.is_file() else pd.DataFrame()
    for solver in dict.fromkeys(["sgd", "kfac", *_solvers_in(folder)]):
        study = problem.study.get(solver)
        if study:
            rows.append({"": f"study {label(solver)}", "loss": _num(study["loss"]),
                         "LR": _num(study["learning_rate_init"]),
                         "batch": str(study["batch_size"]),
                         "M / m_rate": _num(study.get("momentum",
                                                      study.get("momentum_rate"))),
                         "m_max": _num(study.get("momentum_max")), "damping": "–"})
        trials = _trials(folder, solver)
        if len(trials):
            best = trials.nsmallest(1, "val_loss").iloc[0]
            test = "–"
            if len(runs):
                mine = runs[(runs["solver"] == solver) & (runs["trial"] == best["trial"])]
                if len(mine):
                    test = _num(float(mine["final_loss"].median()))
            rows.append({"": f"ours {label(solver)}",
                         "loss": f"{_num(float(best['val_loss']))} (val) / {test} (test)",
                         "LR": _num(float(best["learning_rate_init"])),
                         "batch": str(int(best["batch_size"])),
                         "M / m_rate": _num(float(best.get("momentum", best.get(
                             "momentum_rate", best.get("beta_1", math.nan))))),
                         "m_max": _num(float(best["momentum_max"])) if "momentum_max" in best
                         else "–",
                         "damping": _num(float(best["damping"]), 3) if "damping" in best
                         else "–"})
    return (f"Best search trial next to the study's {problem.study['table']} "
            f"(study: {problem.study['budget']}; ours: validation loss in the search / "
            "median final test loss in the comparison; M / m_rate column: Adam's beta_1):"
            "\n\n" + _markdown(pd.DataFrame(rows)))


_BOUNDS = re.compile(r"low=([^,]+), high=([^,)]+)")


def _recorded_bounds(settings: dict) -> dict:
    """``{parameter: (low, high)}`` from the search space recorded with the trials."""
    bounds = {}
    for name, text in (settings.get("space") or {}).items():
        match = _BOUNDS.search(text)
        if match:
            bounds[name] = (float(match[1]), float(match[2]))
    return bounds


def _bound_notes(folder: Path, k: int = 4) -> list[str]:
    """Parameters of the best trials lying on an edge of the search space they used."""
    notes = []
    for solver in _solvers_in(folder):
        trials = _trials(folder, solver)
        if not len(trials):
            continue
        best = trials.nsmallest(k, "val_loss")
        bounds = _recorded_bounds(read_settings(folder / f"tune_{solver}.json"))
        for name, (low, high) in bounds.items():
            if name not in best:
                continue
            for edge, side in ((low, "lower"), (high, "upper")):
                hits = int(np.isclose(best[name].astype(float), edge, rtol=1e-3).sum())
                if hits:
                    notes.append(f"{label(solver)}: `{name}` is at the {side} end "
                                 f"({edge:g}) of the search space in {hits} of the best "
                                 f"{len(best)} trials")
    return notes


def _load_note(folder: Path) -> str:
    loads = []
    for path in [*sorted(folder.glob("tune_*.csv")), folder / "compare_runs.csv"]:
        if path.is_file():
            frame = pd.read_csv(path, on_bad_lines="skip")
            if "load_avg" in frame:
                loads.extend(frame["load_avg"].dropna().tolist())
    if not loads:
        return ""
    return (f"1-minute load average at the end of the trials and runs: median "
            f"{np.median(loads):.2f}, max {max(loads):.2f} ({os.cpu_count()} CPUs)")


def _stale_spaces(folder: Path) -> list[str]:
    """Solvers whose recorded search space differs from today's (``search_space``)."""
    from skkfac.search import search_space

    stale = []
    for solver in _solvers_in(folder):
        settings = read_settings(folder / f"tune_{solver}.json")
        if not settings.get("space"):
            continue
        current = search_space(solver, int(settings.get("n_train", 10**9)))
        if {k: repr(v) for k, v in current.items()} != settings["space"]:
            stale.append(label(solver))
    return stale


def _code_versions(out: Path, problem) -> str:
    """Which code revision the finished tune / compare / batch-size commands ran on."""
    found = {}
    for entry in read_commands(out):
        words = entry["command"].split()
        if entry["status"] != "finished" or f"--problem {problem.name}" not in entry["command"]:
            continue
        step = next((w for w in words[3:4]), "?")
        found[step] = entry["version"]  # the last finished one counts
    return ", ".join(f"{step} {version}" for step, version in found.items() if version)


def _diverged_trials(folder: Path) -> list[str]:
    """``'<solver> trial 3, 7'`` for every solver with diverged or failed trials."""
    found = []
    for solver in _solvers_in(folder):
        trials = _trials(folder, solver)
        bad = [int(row["trial"]) for row in trials.to_dict("records") if is_diverged(row)]
        if bad:
            found.append(f"{label(solver)} trial{'s' if len(bad) > 1 else ''} "
                         + ", ".join(map(str, bad)))
    return found


def _problem_section(problem, folder: Path, out: Path) -> str:
    rel = folder.relative_to(out)
    parts = [f"## {problem.title} (`{problem.name}`)"]
    solvers = _solvers_in(folder)
    settings = next((read_settings(folder / f"tune_{s}.json") for s in solvers),
                    read_settings(folder / "compare.json"))
    if settings.get("note"):
        parts.append(f"> **Note:** {settings['note']}")
    details = []
    search_times = set()
    for solver in solvers:
        s = read_settings(folder / f"tune_{solver}.json")
        if s:
            search_times.add(float(s["max_time"]))
            details.append(f"search {label(solver)}: {len(_trials(folder, solver))} "
                           f"trials, max_time {s['max_time']} s, {s['repeats']} repeat(s), "
                           f"{s['n_initial_points']} random initial points, seed {s['seed']}, "
                           f"{s['n_train']} training / {s['n_val']} validation rows")
    compare = read_settings(folder / "compare.json")
    if compare:
        rows = compare.get("train_eval_rows")
        details.append(f"compare: max_time {compare['max_time']} s, test set every "
                       f"{compare['eval_interval']:.3g} s, {compare['n_train']} training / "
                       f"{compare['n_test']} test rows; training loss on "
                       + ("all training rows" if rows is None else
                          f"a fixed sample of {rows} training rows for the curves, all of "
                          "them for the final value"))
        shorter = sorted(t for t in search_times if t < float(compare["max_time"]))
        if shorter:
            shown = ", ".join(f"{t:g}" for t in shorter)
            details.append(f"**the searches used shorter trials ({shown} s) than the "
                           f"comparison ({compare['max_time']} s)**: the best "
                           "configurations were chosen for the shorter budget")
    diverged = _diverged_trials(folder)
    if diverged:
        details.append("diverged or failed search trials (marked x in the search figure): "
                       + "; ".join(diverged))
    bs = read_settings(folder / "batch_size.json")
    if bs:
        details.append(f"batch-size: time budget {bs['max_time']} s, update budgets "
                       f"{bs['updates']} / {bs['artificial_updates']}")
    load = _load_note(folder)
    if load:
        details.append(load)
    versions = _code_versions(out, problem)
    if versions:
        details.append(f"code revision of the last finished commands: {versions}")
    stale = _stale_spaces(folder)
    if stale:
        details.append(f"**the search of {' and '.join(stale)} used another search space than "
                       "the current `skkfac.search`** (an earlier version of the code: "
                       "re-run `tune --fresh` and `compare --fresh` to refresh)")
    if details:
        parts.append("\n".join(f"- {d}" for d in details))
    bounds = _bound_notes(folder)
    if bounds:
        parts.append("Search-space edges reached (a wider range might help):\n\n"
                     + "\n".join(f"- {b}" for b in bounds))
    comparison = _study_comparison(problem, folder)
    if comparison:
        parts.append(comparison)
    if (folder / "table.md").is_file():
        parts.append("Retrained configurations, medians and spreads over seeds (cf. the "
                     "study's Tables 1-3):\n\n"
                     + (folder / "table.md").read_text().strip())
    if (folder / "verdict.txt").is_file():
        parts.append("Verdict:\n\n```\n" + (folder / "verdict.txt").read_text().strip()
                     + "\n```")
    for name, caption in FIGURES:
        if (folder / name).is_file():
            parts.append(f"**{caption}**\n\n![{caption}]({rel / name})")
    return "\n\n".join(parts)


def write_report(out, *, title: str = "skkfac benchmark report") -> Path:
    """Write ``<out>/REPORT.md`` from the result files found under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sections = [f"# {title}",
                f"Generated {datetime.datetime.now():%Y-%m-%d %H:%M} by the `report` step of "
                f"`python -m benchmarks` from the result files in `{out}`. "
                "All times are *training* seconds (evaluation excluded) on the machine "
                "that ran the commands listed at the end."]
    problems = _problem_dirs(out)
    if problems:
        summary = pd.DataFrame([_summary_row(p, f) for p, f in problems])
        sections.append("## Summary\n\n" + _markdown(summary) + "\n\n" + PROTOCOL)
    for problem, folder in problems:
        sections.append(_problem_section(problem, folder, out))
    timing = out / "time_budget" / "time_budget.txt"
    if timing.is_file():
        sections.append("## Time budget (`max_time`)\n\nA self-check of the protocol: every "
                        "comparison above stops training by `max_time`, so the suite checks "
                        "that `train_time_` ends within 5 % of the budget plus one update."
                        "\n\n```\n" + timing.read_text().strip() + "\n```")
    nested = [p for p in sorted(out.iterdir())
              if p.is_dir() and (p / "REPORT.md").is_file() and p.name not in PROBLEMS]
    if nested:
        sections.append("## Other result sets\n\n" + "\n".join(
            f"- [{p.name}/REPORT.md]({p.name}/REPORT.md)" for p in nested))
    commands = read_commands(out)
    if commands:
        sections.append("## Commands that produced these files\n\nRun from the repository "
                        "root, in this order (start time, duration, status):\n\n```\n"
                        + "\n".join(f"{c['started']}  {c['duration']:>8}  {c['status']:<11}"
                                    f"  {c['command']}  # {c['version']}"
                                    for c in commands) + "\n```\n\n`skkfac@<rev>` is the "
                        "git revision the command ran on (`+dirty`: with uncommitted "
                        "changes under `skkfac/`).")
    path = out / "REPORT.md"
    path.write_text("\n\n".join(sections) + "\n")
    return path
